"""HTTP and WebSocket handlers. The only place where errors become HTTP answers and close frames."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_websocket import WebSocketError
from aiohttp.log import server_logger

from . import accesslog, logtext, protocol
from .auth import Identity, bearer_token, check_origin, check_publisher, verify_user_token
from .channel import Channel
from .clientaddress import FORWARDING_HEADERS, client_address, is_trusted, parse_networks
from .connection import Connection
from .errors import (
    ClientError,
    CloseConnection,
    PolicyViolation,
    PublishError,
    RateLimited,
    Rejected,
    UnknownChannel,
    UnsupportedData,
)
from .gateway import Gateway
from .logtext import ThrottledLog
from .release import SocketRelease, bound_unacked_time
from .scrape import choose_encoder
from .transports import CONFLATING_UNSENT_BYTES, direct_fd, limit_unsent

log = logging.getLogger("wsgateway.web")

GATEWAY = web.AppKey("gateway", Gateway)
#: The client address of a request behind a trusted proxy (set by the middleware that
#: only runs when trusted_proxies is set); see client_of.
CLIENT = web.RequestKey("client", str)
CLOSING = web.AppKey("closing", set[asyncio.Task[None]])
#: A write-buffer high-water mark no client reaches: the gateway cuts a client long before
#: (max_outbox_bytes), so aiohttp's writer never pauses (see the session loop).
NO_FLOW_CONTROL = 2**31 - 1  # the largest uvloop accepts (a C int)


def handler_args() -> dict[str, Any]:
    """aiohttp's request-handler options for one listener of the gateway.

    - ``auto_decompress`` off: aiohttp inflates a compressed body as it arrives, before any
      handler has checked a token, and drains the rest after the answer: 0.5 MB of deflate
      cost ~1.4 s of the loop. No route here takes a compressed body (publish answers 415).
    - ``logger``: aiohttp's own log, throttled: it writes a traceback for every malformed
      request a client sends.
    """
    return {"auto_decompress": False, "logger": ThrottledLog(server_logger)}


#: Largest POST /api/publish body; larger ones get 413.
MAX_PUBLISH_BODY = 4 * 1024 * 1024


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


class AccessLogger(AbstractAccessLogger):
    """Access log without query strings: ``?token=`` must never reach a log. The client's
    text (its address may come from a header) is escaped: it cannot forge a line. Which
    requests get a line, at which level: accesslog.py (a WebSocket session gets its line
    from :func:`websocket` when it ends)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = accesslog.request_level(request.method, request.path, response.status)
        if level is None or not self.logger.isEnabledFor(level):
            return
        self.logger.log(
            level,
            '%s "%s %s" %s %.1fms',
            logtext.escape(client_of(request)),
            logtext.escape(request.method),
            logtext.escape(request.path),
            response.status,
            time * 1000,
        )


# -- WebSocket ----------------------------------------------------------------------------------


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws/{channel}``: admission before the upgrade, then the client's session.

    The session loop is written out here rather than in a helper coroutine: this frame lives
    as long as the connection, and a second one would cost ~300 bytes per idle client.
    """
    admitted = _admit(request)
    if isinstance(admitted, web.Response):
        return admitted
    gateway, channel, ws, identity = admitted
    address = client_of(request)
    try:
        await ws.prepare(request)
    except BaseException:
        channel.release(address)
        raise
    transport = request.transport
    if transport is None:  # the peer vanished during the handshake
        channel.release(address)
        return ws
    # The gateway bounds what each client may have queued itself (max_outbox_bytes, the
    # slow-consumer cut). aiohttp's flow control would only make this handler wait, inside
    # an internal close or a pong, on a client that never reads: turn it off.
    transport.set_write_buffer_limits(high=NO_FLOW_CONTROL)
    started = time.monotonic()
    # A client whose window stays shut this long has missed a heartbeat pong and its close
    # timeout already: the kernel may drop it, even after the process let go of the socket.
    bound_unacked_time(transport, channel.limits.heartbeat * 1.5 + gateway.settings.close_timeout)
    if channel.conflates:
        # What the kernel holds cannot be merged: keep most of a lagging client's queue here.
        limit_unsent(transport, CONFLATING_UNSENT_BYTES)

    closer = _Closer(ws, transport, request.app[CLOSING], gateway.sockets)
    user = identity.user if identity else None
    conn = channel.open(transport, closer, address, user, direct_fd(transport))
    expiry = None
    if identity is not None and identity.expires is not None:
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, identity.expires - gateway.clock()),
            channel.close,
            conn,
            PolicyViolation.close_code,
            "token expired",
            "token_expired",
        )
    reason = "internal_error"
    access = request.protocol.access_logger  # None: this listener logs no access
    max_topics = channel.limits.max_topics
    received = channel.metrics.received
    frames_in = 0
    try:
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                frames_in += 1
                received.inc()
                now = time.monotonic()
                if not conn.bucket.try_take(now):
                    await _rate_limited(channel, conn, msg.data, now)
                    continue
                try:
                    parsed = protocol.parse_request(msg.data, max_topics)
                    if isinstance(parsed, protocol.Subscribe):
                        # Awaits the broker only for topics not relayed here (resume.py).
                        await gateway.subscribe(channel, conn, parsed)
                    else:
                        _answer(gateway, channel, conn, parsed)
                except ClientError as exc:
                    _reply_error(channel, conn, exc)
            elif kind is WSMsgType.PING:
                frames_in += 1
                # Answered here (autoping is off), as a reply queued like any other: a client
                # that floods pings and never reads becomes a slow consumer (1013) instead of
                # holding this handler in aiohttp's pong write forever.
                channel.send_frame(conn, protocol.pong_frame(msg.data), "pong")
            elif kind is WSMsgType.PONG:
                frames_in += 1  # any frame resets aiohttp's heartbeat; nothing else to do
            elif kind is WSMsgType.BINARY:
                frames_in += 1
                received.inc()
                raise UnsupportedData("binary frames are not supported: send JSON text frames")
            elif kind is WSMsgType.ERROR:
                reason = _classify_failure(channel, msg.data)
                break
            else:  # CLOSE, CLOSING, CLOSED: the client ended the session (or we are closing
                # it, in which case the close already recorded its own reason)
                reason = "client_closed"
                break
    except CloseConnection as exc:
        reason = exc.reason
        channel.close(conn, exc.close_code, exc.message, exc.reason)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the socket goes away under it: a missed
        # heartbeat pong (aiohttp closed the transport) or the peer vanishing.
        reason = _classify_failure(channel, ws.exception()) if not conn.closing else reason
        raise
    except Exception:
        log.exception("unexpected error serving a client of %s", channel.name)
        channel.metrics.error("internal")
        channel.close(conn, WSCloseCode.INTERNAL_ERROR, "internal error", "internal_error")
    finally:
        if expiry is not None:
            expiry.cancel()
        channel.remove(conn, reason)  # no-op when a close above already removed it
        # Whoever ended the session (aiohttp after a missed pong, the client, us), the
        # socket is gone within close_timeout from here.
        gateway.sockets.release(transport)
        if access is not None:
            accesslog.log_session(
                access.logger,
                address,
                channel.name,
                time.monotonic() - started,
                accesslog.close_code(closer.code, ws.close_code),
                conn.end_reason or reason,  # the channel's, when it closed the session itself
                frames_in,
                conn.frames_out,
            )
    if closer.task is not None:
        await asyncio.shield(closer.task)
    _drop_tracebacks(ws.exception())
    return ws


def _drop_tracebacks(error: BaseException | None) -> None:
    """Free the frames of the error that ended a session.

    aiohttp keeps that error on the response (``ws.exception()``), and its traceback holds
    the frames whose ``self`` is the response: a reference cycle of ~57 objects per
    connection (request, transport, buffers) that only a full garbage collection frees, and
    ``wsgateway serve`` runs those rarely (cli.GC_THRESHOLDS). A churn of 20,000 clients
    that reset their connections left ~100 MB for the collector (benchmarks/churn.py).
    """
    seen = 0
    while error is not None and seen < 10:  # a chain: the error raised while handling one
        error.__traceback__ = None
        error = error.__context__
        seen += 1


def _admit(
    request: web.Request,
) -> web.Response | tuple[Gateway, Channel, web.WebSocketResponse, Identity | None]:
    """Every check before the upgrade; a refusal comes back as the HTTP answer to send."""
    gateway = request.app[GATEWAY]
    name = request.match_info["channel"]
    channel = gateway.channels.get(name)
    try:
        if channel is None:
            gateway.reject_unknown_channel()
            raise UnknownChannel(
                f"no channel {name[:64]!r}; channels: " + ", ".join(gateway.channels)
            )
        ws = web.WebSocketResponse(
            # aiohttp refuses a frame of max_msg_size bytes; the SPEC allows exactly that many.
            max_msg_size=channel.limits.max_message_size + 1,
            heartbeat=channel.limits.heartbeat,
            compress=False,  # frames are built once and shared; per-client deflate defeats it
            timeout=gateway.settings.close_timeout,
            autoping=False,  # pongs are queued by the session loop (see WSMsgType.PING there)
        )
        address = client_of(request)
        try:
            identity = _check_request(request, gateway, channel, ws)
        except Rejected as rejection:
            channel.reject(rejection, address)
            raise
        channel.admit(address)  # counts its own refusals
    except Rejected as rejection:
        return _rejection_response(rejection)
    return gateway, channel, ws, identity


def _check_request(
    request: web.Request, gateway: Gateway, channel: Channel, ws: web.WebSocketResponse
) -> Identity | None:
    """What the request itself must get right: an upgrade, an allowed origin, credentials."""
    if not ws.can_prepare(request).ok:
        raise Rejected("expected a WebSocket upgrade request")
    check_origin(request.headers.get("Origin"), gateway.settings.allowed_origins)
    if not channel.private:
        return None
    token = request.query.get("token") or bearer_token(request.headers.get("Authorization"))
    settings = gateway.settings
    return verify_user_token(
        token,
        settings.jwt_secret,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        max_lifetime=settings.max_token_lifetime,
        now=gateway.clock(),
    )


class _Closer:
    """Closes one client from outside its handler (slow consumer, shutdown, token expiry).

    The close runs as a task; the handler awaits it before returning, and shutdown awaits
    every one in ``closing``. A small object rather than a closure: one per connection.
    """

    __slots__ = ("closing", "code", "sockets", "task", "transport", "ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        closing: set[asyncio.Task[None]],
        sockets: SocketRelease,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.closing = closing
        self.sockets = sockets
        self.task: asyncio.Task[None] | None = None
        #: the close code the gateway closed the session with (None: it did not)
        self.code: int | None = None

    def __call__(self, code: int, message: str) -> None:
        self.code = code
        # The deadline runs from the start of the close, whatever the close then waits for.
        self.sockets.release(self.transport)
        task = asyncio.get_running_loop().create_task(
            _close(self.ws, self.transport, self.sockets, code, message)
        )
        self.task = task
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)


def _answer(
    gateway: Gateway,
    channel: Channel,
    conn: Connection,
    request: protocol.Unsubscribe | protocol.Ping,
) -> None:
    try:
        if isinstance(request, protocol.Unsubscribe):
            reply = protocol.unsubscribed(channel.unsubscribe(conn, request.topics), request.id)
        else:
            reply = protocol.pong(request.id, gateway.clock())
    except ClientError as exc:
        exc.request_id = request.id  # the channel's refusal does not know the request's id
        raise
    channel.send(conn, reply, "reply")


def _reply_error(channel: Channel, conn: Connection, exc: ClientError, **extra: Any) -> None:
    channel.metrics.client_errors[exc.code].inc()
    if exc.retry_after is not None:
        extra.setdefault("retry_after", exc.retry_after)
    channel.send(conn, protocol.error(exc.code, exc.message, exc.request_id, **extra), "error")


async def _rate_limited(channel: Channel, conn: Connection, text: str, now: float) -> None:
    """Refuse a frame over the rate limit, then stop reading from the client for a while."""
    channel.metrics.rate_limit_hits["messages_per_second"].inc()
    if conn.strike(now):
        raise PolicyViolation("rate limit exceeded again and again")
    try:
        request_id = protocol.parse_request(text, channel.limits.max_topics).id
    except ClientError as exc:
        request_id = exc.request_id
    wait = conn.bucket.wait_time(now)
    _reply_error(
        channel,
        conn,
        RateLimited(
            f"over {channel.limits.messages_per_second} messages per second; this message was "
            "dropped, resend it later",
            request_id,
        ),
        retry_after=round(wait, 3),
    )
    # The pause: not reading lets TCP push back on the client (aiohttp stops reading the
    # socket once its frame queue is full).
    await asyncio.sleep(wait)


def _classify_failure(channel: Channel, error: object) -> str:
    """Name why a session failed, and count it when it is a failure of the connection."""
    if isinstance(error, WebSocketError):
        # aiohttp has already answered with the matching close code (1009, 1007, 1002).
        if error.code == WSCloseCode.MESSAGE_TOO_BIG:
            return "message_too_big"
        return "invalid_frame"
    if isinstance(error, asyncio.TimeoutError):
        channel.metrics.error("heartbeat_timeout")
        return "heartbeat_timeout"
    if error is None or isinstance(error, ConnectionError | OSError):
        # None: the peer vanished without a close frame or an error from the reader.
        channel.metrics.error("connection_reset")
        return "connection_lost"
    channel.metrics.error("internal")
    return "internal_error"


async def _close(
    ws: web.WebSocketResponse,
    transport: asyncio.Transport,
    sockets: SocketRelease,
    code: int,
    message: str,
) -> None:
    try:
        # drain=False: a slow consumer's buffer may never drain; the close frame queues
        # behind it and the client has close_timeout seconds to read up to it, after which
        # the socket release resets the socket (and so ends this wait too).
        await ws.close(code=code, message=message.encode(), drain=False)
    except Exception:
        log.debug("closing a websocket failed", exc_info=True)
    sockets.release(transport)  # a clean close handshake needs no deadline any more


def _rejection_response(rejection: Rejected) -> web.Response:
    headers = None
    if rejection.retry_after is not None:
        headers = {"Retry-After": str(rejection.retry_after)}
    return json_response(
        {"error": rejection.reason, "message": rejection.message}, rejection.status, headers
    )


# -- HTTP API -----------------------------------------------------------------------------------


async def publish(request: web.Request) -> web.Response:
    """``POST /api/publish``: one message or a batch."""
    gateway = request.app[GATEWAY]
    try:
        headers = request.headers
        _check_publisher(request, gateway)
        protocol.check_content_encoding(headers.getall("Content-Encoding", ()))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_response(
                {
                    "error": "too_large",
                    "field": "body",
                    "message": f"body larger than {MAX_PUBLISH_BODY} bytes",
                },
                413,
            )
        accepted = await gateway.publish_document(protocol.load_publish_body(body))
    except PublishError as exc:
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return json_response(
            {"error": exc.code, "field": exc.field, "message": exc.message}, exc.status, retry
        )
    return json_response({"accepted": accepted})


def _check_publisher(request: web.Request, gateway: Gateway) -> None:
    """The publish rule (auth.check_publisher) for a request to ``/api/publish`` or
    ``/api/drain``: the publish token, or without one a loopback client acting locally."""
    headers = request.headers
    check_publisher(
        bearer_token(headers.get("Authorization")),
        gateway.settings.publish_token,
        client_of(request),
        host=headers.get("Host"),
        origin=headers.get("Origin"),
        content_type=headers.get("Content-Type"),
        bound_host=gateway.settings.host,
        relayed=CLIENT not in request and any(h in headers for h in FORWARDING_HEADERS),
    )


async def drain(request: web.Request) -> web.Response:
    """``POST /api/drain``: drain this node (Gateway.drain), then the process exits.

    Whoever may publish may drain (same credentials, same refusals); the body is not read.
    202, also when a drain is already under way (``"started": false``): a deploy script
    that retries gets the drain it asked for, not an error.
    """
    gateway = request.app[GATEWAY]
    try:
        _check_publisher(request, gateway)
    except PublishError as exc:
        return json_response(
            {"error": exc.code, "field": exc.field, "message": exc.message}, exc.status
        )
    status = gateway.drain()
    return json_response(
        {
            "draining": True,
            "started": status.started,
            "clients": status.clients,
            "seconds": status.seconds,
            "closed": status.closed,
        },
        202,
    )


async def prometheus_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: text or OpenMetrics exposition, as the scraper asks."""
    registry = await request.app[GATEWAY].node_registry()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encoder(registry))
    response.headers["Content-Type"] = content_type
    return response


async def json_metrics(request: web.Request) -> web.Response:
    """``GET /api/ws/metrics``: the JSON view of the same registry."""
    gateway = request.app[GATEWAY]
    return json_response(gateway.metrics_json(await gateway.node_registry()))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reason = request.app[GATEWAY].readiness()
    if reason is None:
        return json_response({"ready": True})
    return json_response({"ready": False, "reason": reason}, 503)


#: The operator's status page (``static/status.html``): one self-contained file, read once.
STATUS_PAGE = (resources.files("wsgateway") / "static" / "status.html").read_bytes()


async def status_page(request: web.Request) -> web.Response:
    """``GET /``: the live status page; it polls ``/api/ws/metrics`` from the browser."""
    return web.Response(
        body=STATUS_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


#: The browser client (``static/client.js``), an ES module; see its header comment.
CLIENT_JS = (resources.files("wsgateway") / "static" / "client.js").read_bytes()
#: The demo page (``static/demo.html``): the demo feed drawn live through /client.js.
DEMO_PAGE = (resources.files("wsgateway") / "static" / "demo.html").read_bytes()


def script_hashes(page: bytes) -> str:
    """CSP sources for the inline scripts of ``page``: the one script the demo page has
    runs, and a script injected into it does not (no ``'unsafe-inline'``)."""
    scripts = re.findall(rb"<script[^>]*>(.*?)</script>", page, re.DOTALL)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in scripts
    )


#: The demo page talks only to the gateway that served it: its own script, /client.js
#: and the WebSocket of the same origin (CSP 'self' covers ws:/wss: of the same host).
DEMO_CSP = (
    "default-src 'none'; "
    f"script-src 'self' {script_hashes(DEMO_PAGE)}; "
    "connect-src 'self'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def client_js(request: web.Request) -> web.Response:
    """``GET /client.js``: the browser client. Any origin may import it (a module script is
    fetched with CORS): it is public code, and connecting is what ``allowed_origins``
    governs, not reading this file."""
    return web.Response(
        body=CLIENT_JS,
        content_type="text/javascript",
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
        },
    )


async def demo_page(request: web.Request) -> web.Response:
    """``GET /demo``: the demo feed's ticker and trades, live, through /client.js."""
    return web.Response(
        body=DEMO_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": DEMO_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def index(request: web.Request) -> web.Response:
    """``GET /api``: a JSON index of the channels and endpoints."""
    gateway = request.app[GATEWAY]
    # With a metrics listener the metrics views are not on this port: list only what is.
    metrics = ["/metrics", "/api/ws/metrics"] if gateway.settings.metrics_port is None else []
    return json_response(
        {
            "service": "wsgateway",
            "channels": {name: f"/ws/{name}" for name in gateway.channels},
            "endpoints": [
                "/api/publish",
                "/api/drain",
                *metrics,
                "/healthz",
                "/readyz",
                "/client.js",
                "/demo",
            ],
        }
    )


#: The catch-all route's name: it answers what no other route of its listener takes.
FALLBACK = "fallback"


async def fallback(request: web.Request) -> web.Response:
    """Any request no other route takes: 404 ``not_found``, or 405 ``method_not_allowed``
    with ``allowed`` and an ``Allow`` header when the path is served for other methods. In
    JSON like every other refusal (aiohttp's own answers are plain text). A catch-all route
    rather than a middleware: the requests a route takes pay nothing for it."""
    allowed: set[str] = set()
    endpoints = []
    for resource in request.app.router.resources():
        if resource.name == FALLBACK:
            continue
        endpoints.append(resource.canonical)
        _, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        names = sorted(allowed)
        return json_response(
            {
                "error": "method_not_allowed",
                "message": f"{request.method[:16]} is not allowed on this path; allowed: "
                + ", ".join(names),
                "allowed": names,
            },
            405,
            {"Allow": ",".join(names)},
        )
    return json_response(
        {
            "error": "not_found",
            "message": f"no endpoint {request.path[:64]!r}; endpoints: " + ", ".join(endpoints),
        },
        404,
    )


def add_fallback(app: web.Application) -> None:
    """Route what no other route of ``app`` takes to :func:`fallback`; add it last."""
    app.router.add_route("*", "/{path:.*}", fallback, name=FALLBACK)


def client_of(request: web.BaseRequest) -> str:
    """The client address of ``request``: its TCP peer, or the client a trusted proxy
    names (admission limits, logs and the publish rule all use this one)."""
    client = request.get(CLIENT)
    return client if client is not None else request.remote or "unknown"


def _trusted_proxy_middleware(settings_trusted: tuple[str, ...]) -> Any:
    trusted = parse_networks(settings_trusted)

    @web.middleware
    async def resolve_client(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.remote
        if peer is not None and is_trusted(peer, trusted):
            headers = request.headers
            forwarded_for = headers.getall("X-Forwarded-For", None)
            forwarded = headers.getall("Forwarded", None)
            request[CLIENT] = client_address(
                peer,
                ",".join(forwarded_for) if forwarded_for else None,
                ",".join(forwarded) if forwarded else None,
                trusted,
            )
        response: web.StreamResponse = await handler(request)
        return response

    return resolve_client


def add_routes(app: web.Application, *, metrics: bool = True) -> None:
    """The public routes; ``metrics=False`` leaves out the status page and the metrics views
    (served by the metrics listener instead, see ``listener.py``)."""
    trusted = app[GATEWAY].settings.trusted_proxies
    if trusted:  # without trusted proxies there is nothing to resolve: no per-request cost
        app.middlewares.append(_trusted_proxy_middleware(trusted))
    if metrics:
        app.router.add_get("/", status_page)
    app.router.add_get("/api", index)
    app.router.add_get("/ws/{channel}", websocket)
    app.router.add_post("/api/publish", publish)
    app.router.add_post("/api/drain", drain)
    if metrics:
        app.router.add_get("/metrics", prometheus_metrics)
        app.router.add_get("/api/ws/metrics", json_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/client.js", client_js)
    app.router.add_get("/demo", demo_page)
    add_fallback(app)
