"""Attack: clients that never read must not keep their sockets after the gateway closes them.

Every test counts the server's sockets as the kernel sees them (psutil: this process's TCP
sockets bound to the gateway's port), never the gauges: the leak this guards against was
invisible to them. Each runs on asyncio's loop and on uvloop (which ``wsgateway serve``
uses, and whose transport is not an ``asyncio.WriteTransport``).

The clients are raw sockets with a small receive buffer that read nothing after the
handshake, so what the server writes piles up in its kernel send buffer, then in the
transport's buffer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import psutil
import pytest
import uvloop
import websockets
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from wsgateway import Limits, Settings, create_app

from .conftest import RunningGateway, recv_json, request, until

pytestmark = [pytest.mark.e2e, pytest.mark.attack]

#: close_timeout in these tests: short, yet long enough to see a socket being held.
CLOSE_TIMEOUT = 2.0
#: Slack on top of close_timeout for a loaded 2-core CI machine (psutil polls, scheduling).
MARGIN = 3.0
CLIENT_RCVBUF = 4096


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
Scenario = Callable[[RunningGateway], Awaitable[None]]


def run_on(loop: str, gateway_settings: Settings, scenario: Scenario) -> None:
    """Run ``scenario`` against a gateway served on a ``loop`` event loop.

    The loop is made here rather than by pytest-asyncio so that one test runs on both
    loops; like the suite's harness, any exception that reaches the loop's handler (a
    callback that raised) fails the test.
    """

    async def main() -> None:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        app = create_app(gateway_settings)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        try:
            await scenario(RunningGateway(server, app))
        finally:
            await server.close()
        assert not errors, errors

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


def settings(**limits: object) -> Settings:
    base = Settings(close_timeout=CLOSE_TIMEOUT)
    return replace(base, defaults=replace(Limits(connections_per_minute=1000), **limits))


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A masked client-to-server frame (RFC 6455, 5.2), payload under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def never_reading_client(gw: RunningGateway, channel: str = "trades") -> socket.socket:
    """A raw WebSocket client that completes the handshake, then reads nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", gw.server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /ws/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: nothing after the headers is read
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        assert chunk, "the server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def server_sockets(gw: RunningGateway) -> int:
    """The gateway's connected TCP sockets, as the kernel lists this process's descriptors."""
    port = gw.server.port
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
    )


async def fill_until(gw: RunningGateway, done: object, limit: int = 20_000) -> None:
    """Publish 8 KB updates on ``trades`` until ``done()`` (one per loop turn, so the
    flush writes between them and the kernel buffers fill before the transport's)."""
    data = "x" * 8000
    for _ in range(limit):
        if done():  # type: ignore[operator]
            return
        await gw.publish("trades", "t", data)
        await asyncio.sleep(0)
    raise AssertionError("the buffers never filled")


async def scrape(gw: RunningGateway) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(gw.http + "/metrics") as r:
        text = await r.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f",{v}" for _, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


async def subscribe_all(sockets: list[socket.socket]) -> None:
    loop = asyncio.get_running_loop()
    for sock in sockets:
        await loop.sock_sendall(sock, client_frame(1, b'{"type":"subscribe","topics":["*"]}'))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_consumer_is_cut_and_its_socket_released(loop: str) -> None:
    run_on(loop, settings(max_outbox_bytes=65_536), slow_consumers)


async def slow_consumers(gw: RunningGateway) -> None:
    trades = gw.gateway.channels["trades"]
    clients = [await never_reading_client(gw) for _ in range(3)]
    try:
        await subscribe_all(clients)
        await until(lambda: trades.state().subscriptions == 3)
        await fill_until(gw, lambda: trades.state().connections == 0)  # all three cut, 1013
        assert gw.gateway.metrics.slow_consumers.labels("trades")._value.get() == 3
        # Held: the clients read nothing, so no close handshake can finish ...
        assert server_sockets(gw) == 3
        metrics = await scrape(gw)
        assert metrics["wsgateway_connections_active,trades"] == 0
        assert metrics["wsgateway_open_sockets"] == 3  # ... and the metrics say so
        # ... until close_timeout: then every socket is reset.
        await until(lambda: server_sockets(gw) == 0, timeout=CLOSE_TIMEOUT + MARGIN)
        assert (await scrape(gw))["wsgateway_open_sockets"] == 0
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_heartbeat_timeout_releases_the_socket(loop: str) -> None:
    # Room for everything queued (no slow-consumer cut): only the missed pong ends them.
    run_on(loop, settings(heartbeat=2.0, max_outbox_bytes=16 * 1024 * 1024), missed_pongs)


async def missed_pongs(gw: RunningGateway) -> None:
    trades = gw.gateway.channels["trades"]
    clients = [await never_reading_client(gw) for _ in range(3)]
    try:
        await subscribe_all(clients)
        await until(lambda: trades.state().subscriptions == 3)
        # Unread bytes in each transport's buffer: its close can never finish by itself.
        await fill_until(gw, lambda: trades.state().outbox_bytes > 3 * 100_000)
        assert trades.state().connections == 3
        await until(lambda: trades.state().connections == 0, timeout=10)
        timeouts = gw.gateway.metrics.disconnects.labels("trades", "heartbeat_timeout")
        assert timeouts._value.get() == 3
        await until(lambda: server_sockets(gw) == 0, timeout=CLOSE_TIMEOUT + MARGIN)
    finally:
        for sock in clients:
            sock.close()


def kernel_send_queues(port: int) -> list[int]:
    """Bytes each of the gateway's TCP sockets holds in the kernel's send queue, from
    /proc/net/tcp: orphans included, which no process lists any more."""
    queues = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A":  # 0A: LISTEN
                queues.append(int(fields[4].split(":")[0], 16))
    return queues


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
@pytest.mark.parametrize("loop", LOOPS)
def test_an_orphaned_send_buffer_is_freed_by_the_kernel(loop: str) -> None:
    # heartbeat 1 s: the kernel may drop a connection stuck for 1.5 + close_timeout seconds.
    run_on(loop, settings(heartbeat=1.0), orphans)


async def orphans(gw: RunningGateway) -> None:
    """Everything unread fits in the kernel's send buffer, so at the missed pong aiohttp
    closes the socket at once; the kernel would keep the orphan (and its buffer) for
    minutes, probing a client that never opens its window."""
    trades = gw.gateway.channels["trades"]
    port = gw.server.port
    clients = [await never_reading_client(gw) for _ in range(3)]
    try:
        await subscribe_all(clients)
        await until(lambda: trades.state().subscriptions == 3)
        for _ in range(20):  # 160 KB each: all taken by the kernel, none left to the transport
            await gw.publish("trades", "t", "x" * 8000)
            await asyncio.sleep(0)
        await until(lambda: sum(q > 100_000 for q in kernel_send_queues(port)) == 3)
        await until(lambda: trades.state().connections == 0, timeout=10)  # missed pongs
        stuck = 1.0 * 1.5 + CLOSE_TIMEOUT
        await until(lambda: not any(kernel_send_queues(port)), timeout=stuck + MARGIN)
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_policy_violation_1008_releases_the_socket(loop: str) -> None:
    run_on(loop, settings(max_outbox_bytes=16 * 1024 * 1024), rate_limit_abusers)


async def rate_limit_abusers(gw: RunningGateway) -> None:
    trades = gw.gateway.channels["trades"]
    loop = asyncio.get_running_loop()
    clients = [await never_reading_client(gw) for _ in range(3)]
    try:
        await subscribe_all(clients)
        await until(lambda: trades.state().subscriptions == 3)
        await fill_until(gw, lambda: trades.state().outbox_bytes > 3 * 100_000)
        # Twice messages_per_second (100) at once: five violations, then 1008.
        for sock in clients:
            await loop.sock_sendall(sock, client_frame(1, b"{}") * 200)
        await until(lambda: trades.state().connections == 0, timeout=10)
        abusers = gw.gateway.metrics.disconnects.labels("trades", "policy_violation")
        assert abusers._value.get() == 3
        await until(lambda: server_sockets(gw) == 0, timeout=CLOSE_TIMEOUT + MARGIN)
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_ping_flood_from_a_client_that_never_reads_is_cut(loop: str) -> None:
    run_on(loop, settings(max_outbox_bytes=65_536), ping_flood)


async def ping_flood(gw: RunningGateway) -> None:
    trades = gw.gateway.channels["trades"]
    loop = asyncio.get_running_loop()
    attacker = await never_reading_client(gw)
    await until(lambda: trades.state().connections == 1)
    # 80,000 pings of 125 bytes: 10 MB of pongs, more than any kernel send buffer takes.
    flood = client_frame(9, b"p" * 125) * 80_000
    sending = asyncio.ensure_future(loop.sock_sendall(attacker, flood))
    try:
        # The pongs are replies like any other: past max_outbox_bytes the client is a slow
        # consumer (1013), and its handler is not stuck in a pong write.
        await until(lambda: trades.state().connections == 0, timeout=30)
        assert gw.gateway.metrics.slow_consumers.labels("trades")._value.get() == 1
        await until(lambda: server_sockets(gw) == 0, timeout=CLOSE_TIMEOUT + MARGIN)
        # A bystander is served as ever.
        async with websockets.connect(gw.ws_url("trades")) as bystander:
            assert (await request(bystander, {"type": "ping", "id": 1}))["type"] == "pong"
            await asyncio.wait_for(await bystander.ping(b"still there?"), 5)  # a real pong
            await request(bystander, {"type": "subscribe", "topics": ["t"]})
            await gw.publish("trades", "t", 1)
            assert (await recv_json(bystander))["data"] == 1
    finally:
        sending.cancel()
        # The reset may have ended the send with ConnectionResetError: retrieve it, or the
        # loop reports an exception that was never retrieved.
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sending
        attacker.close()


# -- shutdown -----------------------------------------------------------------------------------

#: What README.md promises: SIGTERM exits within drain_seconds + close_timeout plus about a
#: second.
SHUTDOWN_SLACK = 1.0


def blocking_client(port: int, channel: str = "trades") -> socket.socket:
    """:func:`never_reading_client` for a test without an event loop."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def metric_sum(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_sigterm_exits_in_time_with_clients_that_never_read() -> None:
    """``wsgateway serve`` (uvloop) with subscribers and ping flooders that read nothing."""
    close_timeout = 1.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATEWAY_")}
    env |= {
        "WSGATEWAY_CLOSE_TIMEOUT": str(close_timeout),
        # SIGTERM drains over drain_seconds first; 0: every client closed at once (1012).
        "WSGATEWAY_DRAIN_SECONDS": "0",
        "WSGATEWAY_CONNECTIONS_PER_MINUTE": "1000",
        # No slow-consumer cut: every client is still connected, buffers full, at SIGTERM.
        "WSGATEWAY_MAX_OUTBOX_BYTES": str(64 * 1024 * 1024),
        "WSGATEWAY_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgateway", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match, line
        url, port = match.group(1), int(match.group(2))
        subscribers = [blocking_client(port) for _ in range(3)]
        flooders = [blocking_client(port) for _ in range(3)]
        clients = subscribers + flooders
        for sock in subscribers:
            sock.sendall(client_frame(1, b'{"type":"subscribe","topics":["*"]}'))
        body = json.dumps(
            {"messages": [{"channel": "trades", "topic": "t", "data": "x" * 8000}] * 10}
        ).encode()
        deadline = time.monotonic() + 30
        while metric_sum(url, "wsgateway_outbox_bytes") < 3 * 100_000:
            assert time.monotonic() < deadline, "the subscribers' buffers never filled"
            publish = urllib.request.Request(
                url + "/api/publish", body, {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(publish, timeout=5).close()
        ping = client_frame(9, b"p" * 125)
        for sock in flooders:  # until the server stops reading them (or 4 MB each)
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                for _ in range(250):
                    sock.sendall(ping * 128)
        assert len(psutil.Process(process.pid).net_connections("tcp")) >= 1 + 6

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        elapsed = time.monotonic() - started
        assert code == 0
        assert elapsed < close_timeout + SHUTDOWN_SLACK + MARGIN, elapsed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        for sock in clients:
            sock.close()
