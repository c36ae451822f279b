"""``wsgateway serve --workers N``: N processes sharing one port, and their supervisor.

The supervisor is a small process that serves nothing. It reserves the port (a socket
bound with SO_REUSEPORT and never listening: it resolves port 0 to a real port, reports a
port taken by another program before any worker starts, and keeps the port while a worker
restarts), makes a private runtime directory for the workers' metrics sockets
(``siblings.py``), and forks N workers. Each worker is a whole gateway with its own event
loop that listens on the same host:port with SO_REUSEPORT, so the kernel spreads new
connections over the workers; they share messages through the broker, which must be
shared (``redis://``): with ``memory://`` each worker would see only its own publishes,
and the settings refuse it before anything starts.

- Start: every worker reports when it listens. One that exits before that stops the start:
  the others are stopped and the supervisor exits 1 (the worker printed why).
- A worker that dies later is restarted after a delay that doubles with each death in a
  row (:class:`Backoff`, capped), so a worker that cannot run does not spin.
- SIGTERM / SIGINT: forwarded to every worker, each of which shuts down as a single
  ``serve`` does; the supervisor waits for them (killing what is left after a deadline),
  then exits.

Fork, not a fresh interpreter: the workers get the settings the supervisor already
checked, and start in milliseconds. The supervisor forks before it starts any thread or
event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from .errors import EXIT_FAILURE, EXIT_OK
from .settings import Settings
from .siblings import WorkerRole

log = logging.getLogger("wsgateway.workers")

#: restart delays: the first, and the longest
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
#: a worker that ran this long before it died starts the delays afresh
STABLE_AFTER = 60.0
#: seconds the workers get to stop, beyond the drain and the sockets' close_timeout
STOP_GRACE = 15.0

#: what runs in a worker: (settings, role, call-when-listening) -> exit code
RunWorker = Callable[[Settings, WorkerRole, Callable[[], None]], int]


class Backoff:
    """How long to wait before restarting a worker that died (pure).

    ``first`` after a worker that had run ``stable_after`` seconds or more; doubled for each
    death in a row of one that had not, up to ``cap``.
    """

    def __init__(
        self,
        first: float = BACKOFF_FIRST,
        cap: float = BACKOFF_CAP,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.first = first
        self.cap = cap
        self.stable_after = stable_after
        self._next = first

    def delay(self, ran_for: float) -> float:
        """The delay before the restart of a worker that died after ``ran_for`` seconds."""
        if ran_for >= self.stable_after:
            self._next = self.first
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT that never listens: it receives no
    connection, and no program without SO_REUSEPORT (and this user) can take the port.
    Raises OSError when the port is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reservation = socket.socket(family, kind, proto)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind(address)
    except OSError:
        reservation.close()
        raise
    return reservation


@dataclasses.dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    index: int
    process: BaseProcess
    ready: Connection
    started: float
    listening: bool = False
    #: its death was seen and handled (a restart scheduled, or the start failed)
    gone: bool = False


class Supervisor:
    """Starts ``settings.workers`` workers running ``run_worker`` and keeps them running."""

    def __init__(
        self,
        settings: Settings,
        run_worker: RunWorker,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.workers: dict[int, Worker] = {}
        #: worker index -> when to start it again
        self.restarts: dict[int, float] = {}
        self.stop_signal: int | None = None
        self._context = multiprocessing.get_context("fork")
        self._runtime_dir = ""
        self._inherited: list[int] = []  # descriptors a worker must not keep
        self._wakeup = -1
        self.restarted = 0

    # -- the whole life -----------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        try:
            reservations = [reserve_port(settings.host, settings.port)]
        except OSError as exc:
            return _refuse(f"cannot listen on {settings.host}:{settings.port}: {_why(exc)}")
        port = reservations[0].getsockname()[1]
        metrics_port = settings.metrics_port
        if metrics_port is not None:
            metrics_host = settings.metrics_host or settings.host
            try:
                reservations.append(reserve_port(metrics_host, metrics_port))
            except OSError as exc:
                reservations[0].close()
                return _refuse(
                    f"cannot listen on {metrics_host}:{metrics_port} (metrics): {_why(exc)}"
                )
            metrics_port = reservations[1].getsockname()[1]
        self.settings = dataclasses.replace(settings, port=port, metrics_port=metrics_port)
        self._runtime_dir = tempfile.mkdtemp(
            prefix="wsgateway-", dir=os.environ.get("XDG_RUNTIME_DIR")
        )
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        self._wakeup = wakeup_read
        self._inherited = [wakeup_read, wakeup_write, *(r.fileno() for r in reservations)]
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        previous_wakeup = signal.set_wakeup_fd(wakeup_write)
        for signum in previous:
            signal.signal(signum, self._on_signal)
        try:
            for index in range(self.settings.workers):
                self._start(index)
            return self._supervise()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for worker in self.workers.values():
                worker.ready.close()
            os.close(wakeup_read)
            os.close(wakeup_write)
            for reservation in reservations:
                reservation.close()
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        else:  # asked again while stopping: pass it on (a worker may treat it as "hurry")
            self._forward(signum)

    def _supervise(self) -> int:
        starting = True
        while True:
            if self.stop_signal is not None:
                return self._stop()
            woke = wait(self._watched(), self._until_next_restart())
            self._drain_wakeup()
            for worker in list(self.workers.values()):
                if worker.ready in woke and not worker.listening:
                    with contextlib.suppress(EOFError, OSError):
                        worker.ready.recv()
                        worker.listening = True
                        if not starting:
                            log.info("worker %d (pid %s) is back", worker.index, worker.process.pid)
                # Not "sentinel in woke": reading ``exitcode`` anywhere (_all_listening, ...)
                # reaps a worker that died since the wait, and a reaped worker's death could
                # go unseen. A death is recognised by its exit code, once (``gone``).
                if not worker.gone and worker.process.exitcode is not None:
                    worker.gone = True
                    if self.stop_signal is not None:
                        continue
                    if starting:
                        return self._fail_start(worker)
                    self._schedule_restart(worker)
            if starting and self._all_listening():
                starting = False
                self._announce()
            now = self.clock()
            for index, when in sorted(self.restarts.items()):
                if when <= now and self.stop_signal is None:
                    del self.restarts[index]
                    self._start(index)
                    self.restarted += 1

    def _watched(self) -> list[Any]:
        watched: list[Any] = [self._wakeup]
        for worker in self.workers.values():
            if not worker.gone:  # a dead one's sentinel is ready: the loop handles it at once
                watched.append(worker.process.sentinel)
                if not worker.listening:
                    watched.append(worker.ready)
        return watched

    def _until_next_restart(self) -> float | None:
        if not self.restarts:
            return None
        return max(0.0, min(self.restarts.values()) - self.clock())

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup, 512):
                pass

    def _all_listening(self) -> bool:
        return len(self.workers) == self.settings.workers and all(
            w.listening and w.process.exitcode is None for w in self.workers.values()
        )

    # -- one worker ---------------------------------------------------------------------------

    def _start(self, index: int) -> None:
        old = self.workers.get(index)
        if old is not None:
            old.ready.close()
        role = WorkerRole(index, self.settings.workers, self._runtime_dir)
        ready_read, ready_write = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=self._worker_main,
            args=(role, ready_write),
            name=f"wsgateway-worker-{index}",
        )
        process.start()
        ready_write.close()  # the worker holds it; a later worker must not
        self.workers[index] = Worker(index, process, ready_read, self.clock())

    def _worker_main(self, role: WorkerRole, ready: Connection) -> None:
        """In the forked worker: leave the supervisor's signals and descriptors, run."""
        _stop_with_parent()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in self._inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        for worker in self.workers.values():
            with contextlib.suppress(OSError):
                worker.ready.close()

        def listening() -> None:
            with contextlib.suppress(OSError):
                ready.send(True)
                ready.close()

        sys.exit(self.run_worker(self.settings, role, listening))

    def _schedule_restart(self, worker: Worker) -> None:
        ran_for = self.clock() - worker.started
        delay = self.backoff.delay(ran_for)
        log.error(
            "worker %d (pid %s) died (%s) after %.1f s; restarting it in %.1f s",
            worker.index,
            worker.process.pid,
            _exit_text(worker.process.exitcode),
            ran_for,
            delay,
        )
        self.restarts[worker.index] = self.clock() + delay

    def _fail_start(self, failed: Worker) -> int:
        self._forward(signal.SIGTERM)
        self._wait_all(self._stop_deadline())
        return _refuse(
            f"worker {failed.index} of {self.settings.workers} could not start "
            f"({_exit_text(failed.process.exitcode)}); the workers are stopped"
        )

    # -- stopping -----------------------------------------------------------------------------

    def _announce(self) -> None:
        s = self.settings
        metrics = (
            f"; metrics on http://{s.metrics_host or s.host}:{s.metrics_port}"
            if s.metrics_port is not None
            else ""
        )
        print(
            f"wsgateway listening on http://{s.host}:{s.port} with {s.workers} workers "
            f"(pids {', '.join(str(w.process.pid) for w in self.workers.values())}; "
            f"channels: {', '.join(s.channels)}; broker {s.broker}"
            f"{'; demo feed on' if s.demo else ''}{metrics})",
            flush=True,
        )

    def _forward(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.process.exitcode is None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    def _stop_deadline(self) -> float:
        s = self.settings
        return self.clock() + s.drain_seconds + s.close_timeout + STOP_GRACE

    def _stop(self) -> int:
        signum = self.stop_signal or signal.SIGTERM
        print(f"wsgateway shutting down: stopping {len(self.workers)} workers", flush=True)
        self.restarts.clear()
        self._forward(signum)
        killed = self._wait_all(self._stop_deadline())
        failed = [w for w in self.workers.values() if w.process.exitcode not in (0, -signum, None)]
        for worker in failed:
            log.error(
                "worker %d stopped with %s", worker.index, _exit_text(worker.process.exitcode)
            )
        print("wsgateway stopped", flush=True)
        return EXIT_FAILURE if killed or failed else EXIT_OK

    def _wait_all(self, deadline: float) -> int:
        """Wait for every worker until ``deadline``, then kill the rest; how many were."""
        while True:
            alive = [w for w in self.workers.values() if w.process.exitcode is None]
            if not alive:
                return 0
            left = deadline - self.clock()
            if left <= 0:
                break
            wait([self._wakeup, *(w.process.sentinel for w in alive)], left)
            self._drain_wakeup()
        for worker in alive:
            log.error("worker %d did not stop in time: killed", worker.index)
            worker.process.kill()
            worker.process.join()
        return len(alive)


#: prctl(2) option: the signal this process gets when its parent dies (Linux)
PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """Have Linux send SIGTERM to this worker if the supervisor dies (SIGKILL, a crash):
    an orphaned worker would keep the port and serve on. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _refuse(message: str) -> int:
    print(f"wsgateway: {message}", file=sys.stderr, flush=True)
    return EXIT_FAILURE
