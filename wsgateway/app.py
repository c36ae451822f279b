"""create_app: wiring and lifecycle of one gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from .brokers import Broker, create_broker
from .cluster import Cluster, node_address
from .demo import run_demo
from .errors import ServerShutdown
from .gateway import Gateway
from .listener import Listener
from .settings import Settings
from .siblings import Siblings, WorkerRole
from .web import CLOSING, GATEWAY, MAX_PUBLISH_BODY, add_routes, handler_args

log = logging.getLogger("wsgateway")
LISTENER = web.AppKey("listener", Listener)


def create_app(
    settings: Settings | None = None,
    *,
    broker: Broker | None = None,
    registry: CollectorRegistry | None = None,
    worker: WorkerRole | None = None,
) -> web.Application:
    """A ready-to-run aiohttp application serving one gateway.

    Each app gets its own Prometheus registry unless one is given (never the global one),
    so two apps in one process do not collide. ``worker``: this app is one worker of
    ``wsgateway serve --workers N`` (workers.py); its metrics views show the whole node.
    """
    settings = settings or Settings()
    gateway = Gateway(
        settings,
        broker or create_broker(settings),
        registry if registry is not None else CollectorRegistry(),
    )
    app = web.Application(client_max_size=MAX_PUBLISH_BODY, handler_args=handler_args())
    app[GATEWAY] = gateway
    app[CLOSING] = set()
    # With a metrics listener, the status page and the metrics views leave the public port.
    add_routes(app, metrics=settings.metrics_port is None)
    listener = app[LISTENER] = Listener(gateway)
    listener.install(app)
    app.cleanup_ctx.append(_broker_and_relay)
    if worker is not None:
        gateway.siblings = Siblings(worker, gateway.registry)
        app.cleanup_ctx.append(gateway.siblings.serve)
    gateway.cluster = Cluster(
        gateway.broker,
        lambda: _figures(gateway),
        address=node_address(settings.host, settings.port),
        worker=0 if worker is None else worker.index,
    )
    # After the broker's: it is stopped only once the cluster's loop is.
    app.cleanup_ctx.append(gateway.cluster.run)
    app.cleanup_ctx.append(listener.serve_metrics)
    if settings.demo:
        app.cleanup_ctx.append(_demo_feed)
    app.on_shutdown.append(_close_clients)
    return app


def get_gateway(app: web.Application) -> Gateway:
    """The :class:`Gateway` of an app made by :func:`create_app` (to publish from Python)."""
    return app[GATEWAY]


def metrics_address(app: web.Application) -> tuple[str, int] | None:
    """Where the metrics listener of a running app made by :func:`create_app` is bound,
    ``(host, port)``; None without ``metrics_port`` or before the app starts."""
    return app[LISTENER].metrics_address


def _figures(gateway: Gateway) -> tuple[int, int]:
    """(open connections, updates sent) of this process, for its cluster record."""
    connections = sum(channel.state().connections for channel in gateway.channels.values())
    sent = sum(s.value for m in gateway.metrics.updates_sent.collect() for s in m.samples)
    return connections, int(sent)


async def _broker_and_relay(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.broker.start()
    relay = asyncio.create_task(gateway.relay(), name="wsgateway-relay")
    yield
    relay.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await relay
    await gateway.broker.stop()


async def _demo_feed(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(run_demo(app[GATEWAY]), name="wsgateway-demo")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_clients(app: web.Application) -> None:
    """Graceful shutdown: refuse new clients, close every open one with 1001.

    At once, not in a drain's batches: an application's cleanup (and every test's) must not
    wait ``drain_seconds``. A drain is what SIGTERM and ``POST /api/drain`` start; one still
    under way here stops where it stands and the rest go now.
    """
    gateway = app[GATEWAY]
    await gateway.end_drain()
    gateway.start_draining()
    closed = gateway.close_all(
        ServerShutdown.close_code, "server shutting down", ServerShutdown.reason
    )
    closing = app[CLOSING]
    pending = set(closing)
    if pending:
        # Each close ends within close_timeout: the socket release resets what is left then.
        await asyncio.wait(pending, timeout=gateway.settings.close_timeout + 1)
    if closed:
        log.info("closed %d client connection(s) with 1001", closed)
