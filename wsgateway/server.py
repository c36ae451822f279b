"""Running the gateway as a process (``wsgateway serve``): its event loop, collector
settings, signals (SIGINT stops, SIGTERM drains), and its start and stop lines. cli.py
parses the command line and calls :func:`run`; with ``--workers N`` the supervisor
(workers.py) calls :func:`run_worker` in each forked worker. Returns exit statuses.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .app import create_app, metrics_address
from .auth import is_loopback_host
from .cluster import node_address
from .errors import EXIT_FAILURE, EXIT_OK
from .gateway import Gateway
from .settings import Settings
from .siblings import WorkerRole
from .web import GATEWAY, AccessLogger

log = logging.getLogger("wsgateway")


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows); asyncio's loop works too
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_worker(settings: Settings, role: WorkerRole, listening: Callable[[], None]) -> int:
    """One worker of ``serve --workers N`` (workers.py runs it in a forked process)."""
    return run(settings, worker=role, listening=listening)


def run(
    settings: Settings,
    *,
    worker: WorkerRole | None = None,
    listening: Callable[[], None] | None = None,
) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            return runner.run(_serve(settings, worker=worker, listening=listening))
        except OSError as exc:
            print(
                f"wsgateway: cannot listen on {settings.host}:{settings.port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE


#: The cyclic collector's thresholds for a process holding many long-lived objects per
#: connection. A full collection re-walks every live connection; at the default third
#: threshold (10) a connection storm spent a third of the server's CPU in the collector
#: (py-spy), most of it in full collections.
#: Running one full collection where the default runs ten took handshakes/s up 12% (2,000
#: connections) to 30% (8,000) and paced CPU down 3%; young collections stay as frequent
#: as ever, so cyclic garbage is still freed soon (benchmarks/README.md). A closed
#: connection leaves no reference cycle behind (listener.py, web._drop_tracebacks), so rare
#: full collections hold no connection's memory: benchmarks/churn.py.
GC_THRESHOLDS = (700, 10, 100)


def tune_gc() -> None:
    """Run full collections less often, and leave what start-up made (modules, the app)
    out of every collection. Only ``wsgateway serve`` does this: an application that
    embeds the gateway keeps its own collector settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def warn_about_exposed_loopback_rule(settings: Settings) -> bool:
    """Log a warning when publishing relies on the loopback rule but the gateway listens
    beyond loopback; True when it did."""
    if settings.publish_token is not None or is_loopback_host(settings.host):
        return False
    log.warning(
        "no publish_token is set and the gateway listens on %s: publishing is open to every "
        "process on this host, and to every client of a reverse proxy on this host that is "
        "not in trusted_proxies; set publish_token (README, Deployment checklist)",
        settings.host,
    )
    return True


async def _serve(
    settings: Settings,
    *,
    worker: WorkerRole | None = None,
    listening: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. ``worker``: as one of ``--workers N``, sharing the port
    (SO_REUSEPORT) and telling the supervisor through ``listening``, which speaks for all."""
    app = create_app(settings, worker=worker)
    if worker is None or worker.index == 0:
        warn_about_exposed_loopback_rule(settings)
    tune_gc()
    runner = web.AppRunner(
        app, handle_signals=False, access_log_class=AccessLogger, shutdown_timeout=10.0
    )
    gateway = app[GATEWAY]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    drain = _DrainSignals(gateway, supervisor=worker is not None)
    loop.add_signal_handler(signal.SIGTERM, drain.on_sigterm)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=worker is not None)
        await site.start()
        port = _bound_port(runner) or settings.port
        if gateway.cluster is not None:
            gateway.cluster.listening_on(node_address(settings.host, port))
        channels = ", ".join(gateway.channels)
        metrics = metrics_address(app)
        if listening is not None:
            listening()  # the supervisor announces the node once every worker listens
        else:
            print(
                f"wsgateway listening on http://{settings.host}:{port} "
                f"(channels: {channels}; broker {settings.broker}"
                f"{'; demo feed on' if settings.demo else ''}"
                f"{f'; metrics on http://{metrics[0]}:{metrics[1]}' if metrics else ''})",
                flush=True,
            )
        # SIGINT stops at once; SIGTERM and POST /api/drain drain first, then stop.
        stopped = asyncio.ensure_future(stop.wait())
        drained = asyncio.ensure_future(gateway.drained.wait())
        try:
            await asyncio.wait((stopped, drained), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            drained.cancel()
        if worker is None:
            if stop.is_set():
                print("wsgateway shutting down: closing clients with 1001", flush=True)
            else:
                print("wsgateway drained: shutting down", flush=True)
    finally:
        await runner.cleanup()
    if worker is None:
        print("wsgateway stopped", flush=True)
    return EXIT_OK


class _DrainSignals:
    """SIGTERM drains the node (Gateway.drain); a second one closes the rest at once.

    As one of ``--workers N`` (``supervisor``), a drain that ``POST /api/drain`` started
    here concerns the whole node, not this worker alone (the supervisor would restart a
    worker that exits by itself): this worker sends SIGTERM to the supervisor, which
    forwards it to every worker, this one included, which then joins the drain under way.
    """

    def __init__(self, gateway: Gateway, *, supervisor: bool) -> None:
        self.gateway = gateway
        self.sigterms = 0
        if supervisor:
            gateway.on_drain = self.tell_supervisor

    def on_sigterm(self) -> None:
        self.sigterms += 1
        if self.sigterms == 1:
            self.gateway.drain()  # joins a drain that POST /api/drain started
        else:
            log.info("SIGTERM again: closing the remaining clients now")
            self.gateway.hurry_drain()

    def tell_supervisor(self) -> None:
        if self.sigterms == 0:  # not the supervisor's own SIGTERM: the API started it
            os.kill(os.getppid(), signal.SIGTERM)


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
