"""The harness itself: an error the event loop only logs must fail the test that caused it.

Each case runs in a separate pytest process, with this project's configuration and a copy
of ``tests/conftest.py``, so that the failures it provokes on purpose stay inside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent

PROVOKED = """
import asyncio
import gc

import pytest
from prometheus_client import CollectorRegistry

from wsgateway.brokers.base import NO_POSITION, History, Update
from wsgateway.channel import Channel
from wsgateway.metrics import GatewayMetrics
from wsgateway.settings import Limits


class Transport:
    def write(self, data): pass
    def get_write_buffer_size(self): return 0
    def is_closing(self): return False


async def boom():
    raise ValueError("boom in a task")


async def test_clean():
    await asyncio.sleep(0)


async def test_callback_raises():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)


async def test_channel_without_a_wall_clock():
    metrics = GatewayMetrics(CollectorRegistry()).for_channel("ticker")
    channel = Channel("ticker", Limits(), metrics, wall_clock=None)
    channel.admit("10.0.0.1")
    conn = channel.open(Transport(), lambda code, message: None, "10.0.0.1")
    for pending in channel.subscribe(conn, ["BTC-USD"]).pending:
        channel.complete(pending, History(NO_POSITION, []))
    channel.broadcast(Update("ticker", "BTC-USD", 1, 0.0, {"p": 1}))
    await asyncio.sleep(0)  # the flush raises: the test body itself sees nothing


async def test_task_exception_never_retrieved():
    task = asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0)
    assert task.done()
    del task  # freed unawaited: reported as it is freed, during the test


async def test_task_in_a_cycle_exception_never_retrieved():
    task = asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0)
    cycle = [task]
    cycle.append(cycle)
    del task, cycle  # freed only by a garbage collection, after the test


def test_sync_test_is_checked_too():
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(lambda: 1 / 0)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_uvloop_is_checked_too():
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        loop.call_soon(lambda: 1 / 0)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


@pytest.mark.allow_loop_errors(r"ZeroDivisionError")
async def test_allowed_by_pattern(loop_errors):
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)
    assert len(loop_errors) == 1


@pytest.mark.allow_loop_errors
async def test_allowed_without_pattern():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)


@pytest.mark.allow_loop_errors(r"KeyError")
async def test_other_errors_still_fail():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run PROVOKED under the project's conftest; map each test name to its outcome."""
    where = tmp_path_factory.mktemp("loop_errors")
    (where / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (where / "test_provoked.py").write_text(PROVOKED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run(
        [
            sys.executable,
            *("-m", "pytest", "-q", "-rA", "-p", "no:xdist", "-p", "no:cacheprovider"),
            *("-c", str(ROOT / "pyproject.toml"), "--rootdir", str(where)),
            str(where / "test_provoked.py"),
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found: dict[str, str] = {}
    for line in run.stdout.splitlines():
        outcome, _, rest = line.partition(" ")
        if outcome in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            name = rest.split("::", 1)[1].split(" ")[0]
            # A test that passed its call but failed its teardown is listed twice.
            found[name] = "ERROR" if outcome == "ERROR" else found.get(name, outcome)
    assert found, run.stdout + run.stderr
    return found


def test_a_test_without_loop_errors_passes(outcomes: dict[str, str]) -> None:
    assert outcomes["test_clean"] == "PASSED"


@pytest.mark.parametrize(
    "name",
    ["test_callback_raises", "test_channel_without_a_wall_clock", "test_other_errors_still_fail"],
)
def test_an_error_in_a_loop_callback_fails_the_test(outcomes: dict[str, str], name: str) -> None:
    assert outcomes[name] == "FAILED"


def test_an_exception_never_retrieved_fails_the_test(outcomes: dict[str, str]) -> None:
    assert outcomes["test_task_exception_never_retrieved"] == "FAILED"
    # Freed by the collection at teardown, not at some later test's.
    assert outcomes["test_task_in_a_cycle_exception_never_retrieved"] == "ERROR"


def test_a_loop_a_sync_test_runs_itself_is_checked(outcomes: dict[str, str]) -> None:
    assert outcomes["test_sync_test_is_checked_too"] == "FAILED"


def test_uvloop_reports_to_the_same_handler(outcomes: dict[str, str]) -> None:
    pytest.importorskip("uvloop")
    assert outcomes["test_uvloop_is_checked_too"] == "FAILED"


@pytest.mark.parametrize("name", ["test_allowed_by_pattern", "test_allowed_without_pattern"])
def test_the_marker_allows_expected_errors(outcomes: dict[str, str], name: str) -> None:
    assert outcomes[name] == "PASSED"
