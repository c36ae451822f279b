"""The listener's limits over real sockets: half-sent requests, the pending cap per address,
idle keep-alive, and the separate metrics listener (wsgateway/listener.py).

The attacker connects from 127.0.0.1; the bystander binds its sockets to 127.0.0.2, another
client address on the same loopback interface. Sockets are counted on the server's side
(psutil: this process's TCP descriptors whose local port is the gateway's), not by gauges.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import json
import socket
import struct
import time

import aiohttp
import psutil
import pytest
import websockets
from aiohttp import web

from wsgateway import Settings, create_app, get_gateway
from wsgateway.app import LISTENER, metrics_address
from wsgateway.web import AccessLogger

from .conftest import RunningGateway, StartGateway, recv_json, until
from .test_http_hardening_e2e import BOMB_BYTES, bomb, raw_exchange

pytestmark = pytest.mark.e2e

BYSTANDER = "127.0.0.2"
HALF_REQUEST = b"GET /ws/ticker HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"


def server_sockets(port: int) -> int:
    """Open TCP descriptors of this process on the server's side of ``port``."""
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
    )


def pending_gauge(gw: RunningGateway) -> float:
    value = gw.gateway.registry.get_sample_value("wsgateway_pending_connections")
    assert value is not None
    return value


async def half_sent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HALF_REQUEST)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1024) == b""
    except ConnectionError:
        return True


async def bystander_is_served(gw: RunningGateway) -> None:
    """A client from another address connects, subscribes, and reads the health check."""
    async with websockets.connect(
        gw.ws_url("ticker"), local_addr=(BYSTANDER, 0), open_timeout=10
    ) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": ["BTC"], "id": 1}))
        assert (await recv_json(ws, 10))["type"] == "subscribed"
    connector = aiohttp.TCPConnector(local_addr=(BYSTANDER, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(gw.http + "/healthz") as response,
    ):
        assert response.status == 200


@pytest.mark.attack
async def test_half_sent_requests_are_closed_after_header_timeout(
    start_gateway: StartGateway,
) -> None:
    """200 half-sent requests: each closed once header_timeout passes, every descriptor
    released; meanwhile a bystander is served. (Before: held for aiohttp's 3,630 s.)"""
    gw = await start_gateway(Settings(header_timeout=1.0, max_pending_per_ip=1000))
    attackers = [await half_sent(gw.server.port) for _ in range(200)]
    await until(lambda: server_sockets(gw.server.port) == 200, 10)
    await bystander_is_served(gw)

    closed = await asyncio.wait_for(
        asyncio.gather(*(closed_by_server(reader) for reader, _ in attackers)), 30
    )
    assert all(closed)
    await until(lambda: server_sockets(gw.server.port) == 0, 10)
    assert pending_gauge(gw) == 0
    assert gw.app[LISTENER].pending.footprint() == {"connections": 0, "addresses": 0}
    for _, writer in attackers:
        writer.close()


@pytest.mark.attack
async def test_a_trickled_request_head_gets_no_more_time(start_gateway: StartGateway) -> None:
    """header_timeout is a deadline for the whole head, not an idle timeout: a byte every
    0.1 s does not keep the connection."""
    gw = await start_gateway(Settings(header_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # A valid head, one byte at a time: it would take over 800 s to finish.
    trickle = HALF_REQUEST + b"X-Pad: " + b"a" * 8000
    answer: bytes | None = None
    for byte in trickle:
        writer.write(bytes([byte]))
        try:
            answer = await asyncio.wait_for(reader.read(1), 0.1)
        except TimeoutError:
            continue
        except ConnectionError:
            answer = b""
        break
    assert answer == b""  # closed without an answer
    assert loop.time() - started < 15  # after about header_timeout (1 s), not 800 s
    writer.close()


@pytest.mark.attack
async def test_pending_connections_per_address_are_capped(start_gateway: StartGateway) -> None:
    """With max_pending_per_ip 50, 200 half-sent requests from one address: 150 are closed at
    once, 50 held; the bystander's address is not affected."""
    gw = await start_gateway(Settings(header_timeout=60.0, max_pending_per_ip=50))
    port = gw.server.port
    attackers = [await half_sent(port) for _ in range(200)]
    results = [asyncio.ensure_future(closed_by_server(reader)) for reader, _ in attackers]
    await until(lambda: sum(r.done() for r in results) == 150, 10)
    assert all(r.result() for r in results if r.done())
    await until(lambda: server_sockets(port) == 50, 10)
    assert pending_gauge(gw) == 50
    refused = gw.gateway.registry.get_sample_value("wsgateway_pending_connections_refused_total")
    assert refused == 150

    await bystander_is_served(gw)

    for _, writer in attackers:
        writer.close()
    await asyncio.wait_for(asyncio.gather(*results), 10)
    await until(lambda: server_sockets(port) == 0, 10)
    assert pending_gauge(gw) == 0


async def test_upgraded_sessions_do_not_count_as_pending(start_gateway: StartGateway) -> None:
    """Once its upgrade is answered a session leaves the pending count: a cap of 2 admits
    10 sessions from one address, and a session outlives header_timeout."""
    gw = await start_gateway(Settings(header_timeout=0.5, max_pending_per_ip=2))
    sessions = [await websockets.connect(gw.ws_url("ticker")) for _ in range(10)]
    assert pending_gauge(gw) == 0
    await asyncio.sleep(1.0)  # past header_timeout: the sessions must still be served
    for i, ws in enumerate(sessions):
        await ws.send(json.dumps({"type": "ping", "id": i}))
        assert (await recv_json(ws))["type"] == "pong"
    for ws in sessions:
        await ws.close()


async def test_idle_keep_alive_is_closed_after_header_timeout(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(Settings(header_timeout=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"keep-alive" in head.lower() or b"connection: close" not in head.lower()
    await asyncio.wait_for(reader.read(), 10)  # the body, then EOF: the server closed it
    assert reader.at_eof()
    await until(lambda: server_sockets(gw.server.port) == 0, 10)
    writer.close()


async def test_metrics_listener_serves_the_operator_routes(start_gateway: StartGateway) -> None:
    """With metrics_port, /metrics, /api/ws/metrics and the status page move to it; the
    public port keeps /healthz and /readyz for load balancers."""
    gw = await start_gateway(Settings(metrics_port=0))
    address = metrics_address(gw.app)
    assert address is not None and address[1] not in (0, gw.server.port)
    internal = f"http://{address[0]}:{address[1]}"
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/api/ws/metrics", "/healthz", "/readyz", "/"):
            async with session.get(internal + path) as response:
                assert response.status == 200, path
        async with session.get(internal + "/metrics") as response:
            assert "wsgateway_connections_active" in await response.text()
        for path, status in (
            ("/metrics", 404),
            ("/api/ws/metrics", 404),
            ("/", 404),
            ("/healthz", 200),
            ("/readyz", 200),
        ):
            async with session.get(gw.http + path) as response:
                assert response.status == status, path
        async with session.get(internal + "/ws/ticker") as response:
            assert response.status == 404


async def test_the_api_index_lists_only_the_routes_of_its_port(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(Settings(metrics_port=0))
    assert (await gw.get_json("/api"))["endpoints"] == [
        "/api/publish",
        "/api/drain",
        "/healthz",
        "/readyz",
        "/client.js",  # the browser client and its demo stay on the public port
        "/demo",
    ]


@pytest.mark.attack
async def test_the_metrics_listener_never_inflates_a_body(start_gateway: StartGateway) -> None:
    """Like the public port, the internal one must not inflate a deflate bomb (~1 s of loop
    CPU for 0.5 MB) on a route that takes no body anyway."""
    gw = await start_gateway(Settings(metrics_port=0))
    address = metrics_address(gw.app)
    assert address is not None
    body = bomb(BOMB_BYTES)
    head = (
        "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: deflate\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    cpu = time.process_time()  # server and attacker share this process
    answers = await asyncio.gather(*(raw_exchange(address[1], head, body) for _ in range(2)))
    spent = time.process_time() - cpu
    assert [status for status, _ in answers] == [405, 405]
    assert spent < 0.5, f"{spent:.2f} s of CPU for two compressed bodies"


async def test_without_metrics_port_the_public_port_serves_metrics(gw: RunningGateway) -> None:
    assert metrics_address(gw.app) is None
    async with aiohttp.ClientSession() as session, session.get(gw.http + "/metrics") as response:
        assert response.status == 200


async def reset_after_upgrade(port: int, subscribe: bool) -> None:
    """A client that upgrades, maybe subscribes, then resets the connection (RST)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(
            sock,
            b"GET /ws/ticker HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
        assert head.startswith(b"HTTP/1.1 101")
        if subscribe:
            body = b'{"type":"subscribe","topics":["A"],"id":1}'
            mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as it is
            await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(body)]) + mask + body)
            await loop.sock_recv(sock, 4096)
    finally:
        sock.close()


async def test_closed_connections_leave_no_reference_cycles() -> None:
    """Run as ``wsgateway serve`` runs it (AppRunner, no handler cancellation): connections
    that reset or close leave nothing for the cyclic collector, which serve runs rarely.
    (Before: ~57 objects per reset connection, ~100 MB after a churn of 20,000.)"""
    settings = Settings()
    limits = dataclasses.replace(
        settings.defaults, connections_per_minute=10_000, max_connections_per_ip=10_000
    )
    app = create_app(dataclasses.replace(settings, defaults=limits))
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site.port
    channel = get_gateway(app).channels["ticker"]
    gc.collect()
    gc.disable()
    try:
        for i in range(40):
            await reset_after_upgrade(port, subscribe=i % 2 == 0)
        for _ in range(10):
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/ticker") as ws:
                await ws.send(json.dumps({"type": "subscribe", "topics": ["A"], "id": 1}))
                await recv_json(ws)
        await until(lambda: not channel.connections and server_sockets(port) == 0, 10)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        server_side = {"RequestHandler", "WebSocketResponse", "Request", "Connection"}
        left = collections.Counter(
            type(o).__name__ for o in gc.garbage if type(o).__name__ in server_side
        )
        assert left == {}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await runner.cleanup()


async def test_trusted_proxies_are_not_held_to_the_pending_cap(
    start_gateway: StartGateway,
) -> None:
    """Behind a trusted proxy every connection has its address: 20 pending connections
    from it pass a cap of 5 (header_timeout still closes them)."""
    gw = await start_gateway(
        Settings(header_timeout=60.0, max_pending_per_ip=5, trusted_proxies=("127.0.0.1",))
    )
    held = [await half_sent(gw.server.port) for _ in range(20)]
    await until(lambda: server_sockets(gw.server.port) == 20, 10)
    assert gw.gateway.registry.get_sample_value("wsgateway_pending_connections_refused_total") == 0
    for _, writer in held:
        writer.close()
    await until(lambda: server_sockets(gw.server.port) == 0, 10)
