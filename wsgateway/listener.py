"""How the gateway listens: what a connection may cost before it is a WebSocket session,
the separate metrics listener, and the process's open-files limit.

A socket that has not finished its request head costs a descriptor and nothing else, so
an attacker who half-sends requests can hold descriptors for as long as the server waits:
aiohttp waits its keep-alive timeout, 3630 s, and ~1,000 such sockets from one address
exhausted a default descriptor limit (total outage). Three limits close that:

- ``header_timeout``: a connection that has not delivered a complete request head within
  this many seconds of connecting (or of its previous response) is closed. It is aiohttp's
  keep-alive timeout, which aiohttp already applies from the moment a connection is made
  and enforces only while the connection waits for a request, never during one: a long
  publish or a WebSocket session is not cut. It also bounds an idle keep-alive connection.
- ``max_pending_per_ip``: the connections one client address may hold that are not
  WebSocket sessions (handshakes in progress, HTTP requests, idle keep-alive). A new one
  past it is closed at once, without an answer: a 429 would need its request head first,
  which is the wait this limit exists to avoid. A connection stops counting when its
  upgrade is answered (101); from then on the channel's ``max_connections_per_ip`` counts it.
  Connections from ``trusted_proxies`` are not counted: each carries many clients.
- ``raise_open_files_limit``: ``wsgateway serve`` raises ``RLIMIT_NOFILE``'s soft limit to
  the hard one at start (often 1,024 soft against 524,288 or more hard).

aiohttp offers no public per-connection hook: ``handler_args`` reach only the fixed keyword
arguments of its ``RequestHandler`` and subclassing ``web.Application`` is deprecated. So
:func:`install` wraps the app's ``_make_handler``, which every runner (``AppRunner``,
``TestServer``, ``web.run_app``) calls to build the ``web.Server`` whose
``connection_made``/``connection_lost`` every connection reports to, and wraps those two
on that one server object. The attack tests in ``tests/test_listener_e2e.py`` fail loudly
if an aiohttp release changes this. The same server builds its requests as
:class:`UnnamedRequest` (answers without a ``Server`` header), which
``tests/test_access_e2e.py`` checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from .admission import address_key
from .channel import REJECTION_LOG_INTERVAL
from .clientaddress import is_trusted, parse_networks
from .gateway import Gateway
from .ratelimit import AddressCounter, LogThrottle
from .settings import Settings
from .web import (
    GATEWAY,
    AccessLogger,
    add_fallback,
    handler_args,
    healthz,
    json_metrics,
    prometheus_metrics,
    readyz,
    status_page,
)

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("wsgateway.listener")

#: Soft open-files limit to ask for when the hard limit is "unlimited" (Linux caps both at
#: fs.nr_open, 1,048,576 by default).
UNLIMITED_NOFILE = 1_048_576


class PendingConnections:
    """Connections not yet upgraded to WebSocket, per client address, capped.

    Pure bookkeeping (no I/O): :meth:`admit` when a connection is made, :meth:`settle`
    when it is upgraded or lost, whichever comes first; both are idempotent per key.
    """

    def __init__(
        self,
        cap: int,
        on_refused: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cap = cap
        self._on_refused = on_refused
        self._clock = clock
        self._addresses = AddressCounter()
        self._pending: dict[object, str] = {}
        self._log_throttle = LogThrottle(REJECTION_LOG_INTERVAL)

    def admit(self, key: object, address: str) -> bool:
        """Count a new connection from ``address``; False when it is one too many."""
        if self._addresses.count(address) >= self.cap:
            self._on_refused()
            more = self._log_throttle.note("pending", self._clock())
            if more is not None:
                log.warning(
                    "closed a new connection from %s: it holds %d connections not yet "
                    "upgraded to WebSocket (max_pending_per_ip)%s",
                    address,
                    self.cap,
                    more,
                )
            return False
        self._addresses.add(address)
        self._pending[key] = address
        return True

    def settle(self, key: object) -> None:
        """The connection was upgraded or is gone: it no longer counts."""
        address = self._pending.pop(key, None)
        if address is not None:
            self._addresses.remove(address)

    def count(self, address: str | None = None) -> int:
        """Pending connections of ``address``, or of every address."""
        return len(self._pending) if address is None else self._addresses.count(address)

    def footprint(self) -> dict[str, int]:
        """Sizes of the bookkeeping (all 0 when nothing is pending)."""
        return {"connections": len(self._pending), "addresses": len(self._addresses)}


class UnnamedRequest(web.Request):
    """A request whose answer does not name the server.

    aiohttp names itself and its version on every answer (``Server: Python/3.11
    aiohttp/3.x``): a scanner's shortcut to the known flaws of that version, of no use to a
    client. The header is added before this hook runs and written after it. A hook of the
    request rather than the ``on_response_prepare`` signal: the 400 aiohttp writes for a
    malformed request has no route, and so no app whose signal would run.
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers.popall(hdrs.SERVER, None)
        await super()._prepare_hook(response)


class Listener:
    """The limits above, for every app of one gateway, and its metrics listener."""

    def __init__(self, gateway: Gateway) -> None:
        self.settings: Settings = gateway.settings
        self.gateway = gateway
        metrics = gateway.metrics
        self.pending = PendingConnections(
            self.settings.max_pending_per_ip, metrics.pending_refused.inc
        )
        metrics.pending_connections.set_function(self.pending.count)
        # A trusted proxy's connections carry many clients each; it applies its own header
        # timeouts, and header_timeout still applies to it.
        self._trusted = parse_networks(self.settings.trusted_proxies)
        #: where the metrics listener is bound once started, (host, port)
        self.metrics_address: tuple[str, int] | None = None

    def install(self, app: web.Application) -> None:
        """Apply ``header_timeout`` and ``max_pending_per_ip`` to ``app``'s connections,
        however it is run. Call before the app starts."""
        make_handler = app._make_handler
        header_timeout = self.settings.header_timeout

        def make_guarded_handler(**kwargs: Any) -> web.Server:
            # aiohttp's keep-alive timeout is armed at connection_made and closes a
            # connection only while it waits for a request head: exactly a header timeout.
            kwargs["keepalive_timeout"] = header_timeout
            server = make_handler(**kwargs)
            server.request_factory = partial(app._make_request, _cls=UnnamedRequest)
            self._watch(server)
            return server

        # object.__setattr__: Application.__setattr__ warns about new attributes in debug
        # mode; this one is deliberate (see the module docstring).
        object.__setattr__(app, "_make_handler", make_guarded_handler)
        app.on_response_prepare.append(self._on_response_prepare)

    def _watch(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost
        pending, trusted = self.pending, self._trusted

        def connection_made(handler: RequestHandler, transport: Any) -> None:
            made(handler, transport)
            address = peer_address(transport)
            if trusted and is_trusted(address, trusted):
                return
            # Keyed as the channels' per-address limits are: IPv6 by its /64.
            if not pending.admit(handler, address_key(address)):
                handler.force_close()

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            pending.settle(handler)
            lost(handler, exc)
            # aiohttp 3.14 never clears the callback a WebSocket with a heartbeat installs
            # (its bound method holds the response, which holds the request, which holds
            # this handler): a reference cycle per connection that only a full collection
            # frees, which serve runs rarely (cli.GC_THRESHOLDS). No data comes after
            # connection_lost, so the callback has nothing left to do.
            handler._data_received_cb = None

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    async def _on_response_prepare(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        if response.status == 101:  # an answered upgrade: a session now, no longer pending
            self.pending.settle(request.protocol)

    async def serve_metrics(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: the metrics listener on ``metrics_host:metrics_port``."""
        settings = self.settings
        if settings.metrics_port is None:
            yield
            return
        runner = web.AppRunner(
            self.create_metrics_app(), handle_signals=False, access_log_class=AccessLogger
        )
        await runner.setup()
        host = settings.metrics_host or settings.host
        try:
            # --workers: every worker answers on the metrics port with the node's figures.
            site = web.TCPSite(runner, host, settings.metrics_port, reuse_port=settings.workers > 1)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"metrics listener {host}:{settings.metrics_port}: {exc.strerror}"
            ) from exc
        self.metrics_address = (host, site.port)
        try:
            yield
        finally:
            self.metrics_address = None
            await runner.cleanup()

    def create_metrics_app(self) -> web.Application:
        """The app the metrics listener serves: the operator's read-only routes."""
        app = web.Application(handler_args=handler_args())
        app[GATEWAY] = self.gateway
        app.router.add_get("/", status_page)
        app.router.add_get("/metrics", prometheus_metrics)
        app.router.add_get("/api/ws/metrics", json_metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        add_fallback(app)
        self.install(app)
        return app


def peer_address(transport: Any) -> str:
    """The client's address of a connection (its host, without the port)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return "unknown"  # a Unix socket, or a peer already gone


def raise_open_files_limit() -> int | None:
    """Raise ``RLIMIT_NOFILE``'s soft limit to the hard limit; returns the soft limit now
    in force (None where there is no such limit)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_NOFILE if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, wanted, exc)
            return soft
        return wanted
    return soft
