"""The supervisor of ``serve --workers N``: restart delays (pure), and the supervisor with
stand-in workers (tests/worker_harness.py) in a child process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import alive
from wsgateway.workers import Backoff

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10.0


def test_restart_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(first=0.5, cap=4.0, stable_after=60.0)
    assert [backoff.delay(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_worker_that_ran_long_enough_starts_the_delays_afresh() -> None:
    backoff = Backoff(first=0.5, cap=4.0, stable_after=60.0)
    backoff.delay(1.0)
    backoff.delay(1.0)
    assert backoff.delay(60.0) == 0.5
    assert backoff.delay(59.9) == 1.0


class Harness:
    def __init__(self, mode: str, directory: Path) -> None:
        self.directory = directory
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.worker_harness", mode, str(directory)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def started(self) -> list[tuple[int, int]]:
        """(index, pid) of every worker started so far."""
        found = []
        for path in self.directory.iterdir():
            index, pid = path.name.split("-")
            found.append((int(index), int(pid)))
        return sorted(found)

    def wait_for(self, condition: object, what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {DEADLINE} s; started: {self.started()}")
            time.sleep(0.05)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=DEADLINE)
        return self.process.returncode, out, err


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[type[Harness]]:
    made: list[Harness] = []

    def make(mode: str) -> Harness:
        made.append(Harness(mode, tmp_path))
        return made[-1]

    yield make  # type: ignore[misc]
    for h in made:  # whatever happened, nothing outlives the test
        if h.process.poll() is None:
            h.process.kill()
        h.process.wait()
        for pipe in (h.process.stdout, h.process.stderr):
            if pipe is not None:
                pipe.close()
        for _, pid in h.started():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_every_worker_and_then_the_supervisor(harness: type[Harness]) -> None:
    h = harness("serve")
    line = h.process.stdout.readline()  # type: ignore[union-attr]
    assert "with 2 workers" in line, line
    workers = h.started()
    assert [index for index, _ in workers] == [0, 1]
    port = line.split("127.0.0.1:")[1].split()[0]
    assert port != "0" and {p.read_text() for p in h.directory.iterdir()} == {port}
    h.process.send_signal(signal.SIGTERM)
    code, out, err = h.finish()
    assert code == 0, err
    assert "wsgateway stopped" in out
    assert not any(alive(pid) for _, pid in workers)


def test_a_worker_that_dies_is_restarted(harness: type[Harness]) -> None:
    h = harness("serve")
    assert "with 2 workers" in h.process.stdout.readline()  # type: ignore[union-attr]
    (_, second) = h.started()[1]
    os.kill(second, signal.SIGKILL)
    h.wait_for(lambda: len(h.started()) == 3, "worker 1 restarted")
    assert [index for index, _ in h.started()].count(1) == 2
    h.process.send_signal(signal.SIGTERM)
    code, _, err = h.finish()
    assert code == 0
    assert f"worker 1 (pid {second}) died (killed by SIGKILL)" in err, err
    assert "restarting it in 0.2 s" in err


def test_workers_that_cannot_start_stop_the_start_with_a_clear_message(
    harness: type[Harness],
) -> None:
    h = harness("fail")
    code, out, err = h.finish()
    assert code == 1
    assert "could not start (exit code 3); the workers are stopped" in err, err
    assert "listening" not in out


def test_workers_do_not_outlive_a_killed_supervisor(harness: type[Harness]) -> None:
    h = harness("serve")
    assert "with 2 workers" in h.process.stdout.readline()  # type: ignore[union-attr]
    workers = [pid for _, pid in h.started()]
    h.process.kill()
    h.process.wait()
    h.wait_for(lambda: not any(alive(pid) for pid in workers), "the orphaned workers gone")
