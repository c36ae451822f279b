"""The access log, the Server header and the JSON 404/405, against real servers: a gateway
on a real socket (both listeners) with real HTTP and WebSocket clients, and one
``wsgateway serve`` process for the log as an operator reads it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestServer

from tests.conftest import recv_json, request, until, wait_closed
from tests.processes import GatewayNode
from wsgateway import Settings, create_app, get_gateway
from wsgateway.app import metrics_address
from wsgateway.web import AccessLogger

SESSION = re.compile(
    r'^127\.0\.0\.1 "GET /ws/ticker" 101 session (\d+\.\d{3})s close (\d+) (\w+) '
    r"frames in (\d+) out (\d+)$"
)


class Gateway:
    """A gateway served as ``wsgateway serve`` serves it (our AccessLogger), optionally
    with its metrics listener."""

    def __init__(self, server: TestServer) -> None:
        self.server = server

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def metrics_http(self) -> str:
        address = metrics_address(self.server.app)  # type: ignore[arg-type]
        assert address is not None
        return f"http://{address[0]}:{address[1]}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws/ticker"


@pytest.fixture
async def start() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(settings: Settings | None = None) -> Gateway:
        server = TestServer(create_app(settings or Settings()), host="127.0.0.1", port=0)
        await server.start_server(access_log_class=AccessLogger)
        servers.append(server)
        return Gateway(server)

    yield start
    for server in servers:
        await server.close()


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aiohttp.access"]


def sessions(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    found = [SESSION.match(r.getMessage()) for r in access_records(caplog)]
    return [m for m in found if m is not None]


# -- one line per WebSocket session, when it ends ----------------------------------------------


async def test_a_session_is_logged_once_when_it_ends(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start()
    gateway = get_gateway(gw.server.app)
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        async with websockets.connect(gw.ws) as ws:
            await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
            await request(ws, {"type": "ping", "id": 2})
            for price in range(3):
                await gateway.publish("ticker", "BTC-USD", {"price": price})
                assert (await recv_json(ws))["data"] == {"price": price}
            # the upgrade was answered long ago: no line for it
            assert access_records(caplog) == []
            await asyncio.sleep(0.2)
        await until(lambda: len(access_records(caplog)) == 1)
    (record,) = access_records(caplog)
    assert record.levelno == logging.INFO
    match = SESSION.match(record.getMessage())
    assert match, record.getMessage()
    seconds, code, reason, frames_in, frames_out = match.groups()
    assert 0.2 <= float(seconds) < 30
    assert (code, reason) == ("1000", "client_closed")
    # in: subscribe, ping; out: subscribed, pong, three updates
    assert (frames_in, frames_out) == ("2", "5")


async def test_a_session_the_gateway_closes_says_why(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start()
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        async with websockets.connect(gw.ws) as ws:
            await request(ws, {"type": "ping", "id": 1})
            await ws.send(b"\x00binary")
            assert await wait_closed(ws) == 1003
        await until(lambda: len(sessions(caplog)) == 1)
    assert sessions(caplog)[0].groups()[1:] == ("1003", "binary_frame", "2", "1")


async def test_a_session_ended_by_a_drain(start: Any, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start()
    gateway = get_gateway(gw.server.app)
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        async with websockets.connect(gw.ws) as ws:
            await request(ws, {"type": "subscribe", "topics": ["A"], "id": 1})
            gateway.drain(seconds=0)
            assert await wait_closed(ws) == 1012
        await until(lambda: len(sessions(caplog)) == 1)
    assert sessions(caplog)[0].groups()[1:] == ("1012", "draining", "1", "1")


async def test_a_session_ended_by_a_shutdown(start: Any, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start()
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        ws = await websockets.connect(gw.ws)
        await request(ws, {"type": "ping", "id": 1})
        await gw.server.close()
        assert await wait_closed(ws) == 1001
        await until(lambda: len(sessions(caplog)) == 1)
    assert sessions(caplog)[0].groups()[1:] == ("1001", "shutdown", "1", "1")


async def test_a_session_whose_peer_vanished(start: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No close frame either way: 1006, as RFC 6455 names it."""
    gw = await start()
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        ws = await websockets.connect(gw.ws)
        await request(ws, {"type": "subscribe", "topics": ["A"], "id": 1})
        ws.transport.abort()
        await until(lambda: len(sessions(caplog)) == 1)
    assert sessions(caplog)[0].groups()[1:] == ("1006", "connection_lost", "1", "1")


# -- polls at DEBUG, the rest at INFO ------------------------------------------------------------


async def test_polls_are_logged_at_debug_and_other_requests_at_info(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start()
    polls = ["/", "/metrics", "/api/ws/metrics", "/healthz", "/readyz"]
    with caplog.at_level(logging.DEBUG, logger="aiohttp.access"):
        async with aiohttp.ClientSession() as http:
            for path in polls:
                async with http.get(gw.http + path) as response:
                    assert response.status == 200
            async with http.post(
                gw.http + "/api/publish",
                json={"channel": "ticker", "topic": "A", "data": 1},
            ) as response:
                assert response.status == 200
            async with http.get(gw.http + "/nope") as response:
                assert response.status == 404
        await until(lambda: len(access_records(caplog)) == len(polls) + 2)
    levels = {r.getMessage().split('"')[1]: r.levelno for r in access_records(caplog)}
    assert levels == {
        **{f"GET {path}": logging.DEBUG for path in polls},
        "POST /api/publish": logging.INFO,
        "GET /nope": logging.INFO,
    }


# -- no Server header ------------------------------------------------------------------------


def raw_head(port: int, request_bytes: bytes) -> str:
    """The head of the server's answer to ``request_bytes``, read from a plain socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n\r\n")[0].decode("latin-1")


UPGRADE = (
    b"GET /ws/ticker HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MALFORMED = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.attack
async def test_no_answer_names_the_server_on_either_listener(start: Any) -> None:
    """aiohttp wrote ``Server: Python/3.11 aiohttp/3.x`` on every answer, the 400 for a
    malformed request included (it has no route, so no app signal runs for it)."""
    gw = await start(Settings(metrics_port=0))
    public = gw.server.port
    metrics = int(gw.metrics_http.rsplit(":", 1)[1])
    cases = [
        (public, get("/api"), "200"),
        (public, get("/healthz"), "200"),
        (public, get("/nope"), "404"),
        (public, get("/healthz", "POST"), "405"),
        (public, get("/ws/nope"), "404"),
        (public, UPGRADE, "101"),
        (public, MALFORMED, "400"),
        (metrics, get("/metrics"), "200"),
        (metrics, get("/"), "200"),
        (metrics, get("/nope"), "404"),
        (metrics, MALFORMED, "400"),
    ]
    for port, request_bytes, status in cases:
        head = await asyncio.to_thread(raw_head, port, request_bytes)
        assert head.split(" ")[1] == status, head
        names = [line.split(":")[0].lower() for line in head.split("\r\n")[1:]]
        assert "server" not in names, head
        assert "date" in names, head  # the other headers aiohttp adds are still there


# -- JSON 404 and 405 ------------------------------------------------------------------------


async def answer(url: str, method: str = "GET") -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as response:
        body = await response.read()
        return response.status, dict(response.headers), json.loads(body) if body else None


async def test_unknown_paths_get_a_json_404_on_both_listeners(start: Any) -> None:
    gw = await start(Settings(metrics_port=0))
    status, headers, body = await answer(gw.http + "/nope")
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert body["error"] == "not_found"
    assert body["message"].startswith("no endpoint '/nope'; endpoints: /api, /ws/{channel}")
    # the metrics views are not on the public port when a metrics listener serves them
    assert (await answer(gw.http + "/metrics"))[2]["error"] == "not_found"
    status, headers, body = await answer(gw.metrics_http + "/api/publish")
    assert (status, headers["Content-Type"], body["error"]) == (
        404,
        "application/json",
        "not_found",
    )
    assert "/metrics" in body["message"]
    status, headers, body = await answer(gw.http + "/nope", "HEAD")
    assert (status, headers["Content-Type"], body) == (404, "application/json", None)


@pytest.mark.parametrize(
    ("listener", "method", "path", "allowed"),
    [
        ("public", "POST", "/healthz", ["GET", "HEAD"]),
        ("public", "GET", "/api/publish", ["POST"]),
        ("public", "DELETE", "/api/drain", ["POST"]),
        ("public", "PUT", "/ws/ticker", ["GET", "HEAD"]),
        ("metrics", "POST", "/metrics", ["GET", "HEAD"]),
        ("metrics", "DELETE", "/", ["GET", "HEAD"]),
    ],
)
async def test_a_method_a_path_does_not_take_gets_a_json_405(
    start: Any, listener: str, method: str, path: str, allowed: list[str]
) -> None:
    gw = await start(Settings(metrics_port=0))
    base = gw.http if listener == "public" else gw.metrics_http
    status, headers, body = await answer(base + path, method)
    assert status == 405
    assert headers["Allow"] == ",".join(allowed)
    assert headers["Content-Type"] == "application/json"
    assert body["error"] == "method_not_allowed"
    assert body["allowed"] == allowed
    assert body["message"] == f"{method} is not allowed on this path; allowed: " + ", ".join(
        allowed
    )


async def test_the_routes_still_answer_as_before(start: Any) -> None:
    """The catch-all route comes last: it takes nothing another route takes."""
    gw = await start()
    assert (await answer(gw.http + "/healthz"))[2] == {"status": "ok"}
    assert (await answer(gw.http + "/api"))[2]["service"] == "wsgateway"
    assert (await answer(gw.http + "/ws/nope"))[2]["error"] == "unknown_channel"
    async with websockets.connect(gw.ws) as ws:
        assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"


# -- as an operator reads it -------------------------------------------------------------------


@pytest.mark.e2e
async def test_serve_logs_sessions_and_requests_not_polls() -> None:
    with GatewayNode() as node:
        async with websockets.connect(f"ws://127.0.0.1:{node.port}/ws/ticker") as ws:
            await request(ws, {"type": "subscribe", "topics": ["A"], "id": 1})
            async with aiohttp.ClientSession() as http:
                for path in ("/healthz", "/readyz", "/api/ws/metrics", "/metrics", "/"):
                    async with http.get(node.http + path) as response:
                        assert response.status == 200
                async with http.get(node.http + "/nope") as response:
                    assert response.status == 404
            await until(lambda: '"GET /nope" 404' in node.output(), 10)
            assert "/ws/ticker" not in node.output()  # not at the upgrade
        deadline = time.monotonic() + 10
        while '"GET /ws/ticker" 101 session' not in node.output():
            assert time.monotonic() < deadline, node.output()
            await asyncio.sleep(0.05)
        access = [line for line in node.lines if "aiohttp.access" in line]
        assert len(access) == 2, access
        assert re.search(r'INFO aiohttp\.access: 127\.0\.0\.1 "GET /nope" 404 ', access[0])
        assert re.search(
            r'INFO aiohttp\.access: 127\.0\.0\.1 "GET /ws/ticker" 101 session \d+\.\d{3}s '
            r"close 1000 client_closed frames in 1 out 1$",
            access[1].rstrip("\n"),
        )
