"""Every limit over real sockets: the exact refusal, and everyone else keeps being served."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from wsgateway import Settings

from .conftest import RunningGateway, StartGateway, recv_json, request, until, wait_closed

# Every limit is a defence against an abusive client: all of them run under `pytest -m attack`.
pytestmark = [pytest.mark.e2e, pytest.mark.attack]


def sample(gw: RunningGateway, name: str, **labels: str) -> float:
    value = gw.gateway.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def rejected(gw: RunningGateway, reason: str) -> float:
    """Upgrades the ticker channel refused for ``reason``."""
    return sample(gw, "wsgateway_connections_rejected_total", channel="ticker", reason=reason)


async def refused(url: str, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, **kwargs):
            pass
    return caught.value


async def bystander(gw: RunningGateway, channel: str = "ticker") -> websockets.ClientConnection:
    ws = await websockets.connect(gw.ws_url(channel))
    assert (await request(ws, {"type": "subscribe", "topics": ["BTC-USD"]}))["type"] == (
        "subscribed"
    )
    return ws


async def still_served(gw: RunningGateway, ws: websockets.ClientConnection) -> None:
    await gw.publish("ticker", "BTC-USD", {"check": True})
    update = await recv_json(ws)
    assert update["type"] == "update" and update["data"] == {"check": True}


async def test_connection_rate_limit_answers_429_with_retry_after(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(connections_per_minute=2)
    first = await bystander(gw)
    async with websockets.connect(gw.ws_url("ticker")):
        rejection = await refused(gw.ws_url("ticker"))
    assert rejection.response.status_code == 429
    retry_after = int(rejection.response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert json.loads(rejection.response.body) == {
        "error": "rate_limited",
        "message": "at most 2 connections per minute per address",
    }
    # The window is per address and channel: another channel, or another address, still
    # admits (tests/test_admission_e2e.py has the attack).
    async with websockets.connect(gw.ws_url("trades")):
        pass
    async with websockets.connect(gw.ws_url("ticker"), local_addr=("127.0.0.2", 0)):
        pass
    assert rejected(gw, "rate_limited") == 1
    assert (
        sample(
            gw, "wsgateway_rate_limit_hits_total", channel="ticker", limit="connections_per_minute"
        )
        == 1
    )
    await still_served(gw, first)
    await first.close()


async def test_channel_capacity_answers_503(start_gateway: StartGateway) -> None:
    gw = await start_gateway(max_connections=2)
    first = await bystander(gw)
    async with websockets.connect(gw.ws_url("ticker")):
        rejection = await refused(gw.ws_url("ticker"))
        assert rejection.response.status_code == 503
        assert json.loads(rejection.response.body)["error"] == "capacity"
    # A place freed by a disconnect is available again.
    await until(lambda: gw.gateway.channels["ticker"].state().connections == 1)
    async with websockets.connect(gw.ws_url("ticker")):
        pass
    await still_served(gw, first)
    await first.close()


async def test_per_address_cap_answers_429(start_gateway: StartGateway) -> None:
    gw = await start_gateway(max_connections_per_ip=1)
    first = await bystander(gw)
    rejection = await refused(gw.ws_url("ticker"))
    assert rejection.response.status_code == 429
    assert "Retry-After" not in rejection.response.headers
    assert json.loads(rejection.response.body) == {
        "error": "ip_limit",
        "message": "at most 1 connections per address",
    }
    assert rejected(gw, "ip_limit") == 1
    await still_served(gw, first)
    await first.close()


async def test_message_rate_limit_replies_then_closes_1008(start_gateway: StartGateway) -> None:
    gw = await start_gateway(messages_per_second=5)
    other = await bystander(gw)
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        for i in range(5):  # the burst allowance
            assert await request(ws, {"type": "ping", "id": i}) == {
                "type": "pong",
                "id": i,
                "ts": pytest.approx(time.time(), abs=5),
            }
        limited = await request(ws, {"type": "ping", "id": "over"})
        assert limited["type"] == "error" and limited["code"] == "rate_limited"
        assert limited["id"] == "over"
        assert 0 < limited["retry_after"] <= 0.2
        # Keeping on: the connection is closed for abuse, with 1008.
        for i in range(100):
            try:
                await ws.send(json.dumps({"type": "ping", "id": i}))
            except ConnectionClosed:
                break
        assert await wait_closed(ws) == 1008
    assert (
        sample(gw, "wsgateway_disconnects_total", channel="ticker", reason="policy_violation") == 1
    )
    assert (
        sample(gw, "wsgateway_rate_limit_hits_total", channel="ticker", limit="messages_per_second")
        >= 5
    )
    await still_served(gw, other)
    await other.close()


async def test_slow_consumer_closed_1013_without_slowing_others(
    start_gateway: StartGateway,
) -> None:
    # Over HOLD_BYTES, so that a client the kernel stops taking bytes from is held, its
    # frames kept in its outbox, until it is cut slow_consumer_grace after passing the limit.
    gw = await start_gateway(max_outbox_bytes=262144, slow_consumer_grace=0.5)
    fast = await bystander(gw, "trades")
    slow = await websockets.connect(gw.ws_url("trades"), max_queue=1)
    await request(slow, {"type": "subscribe", "topics": ["BTC-USD"]})
    # websockets stops reading the socket once its queue is full: from here on, `slow` reads
    # nothing while `fast` reads everything.
    received: list[int] = []

    async def read_fast() -> None:
        while True:
            received.append((await recv_json(fast))["seq"])

    reader = asyncio.create_task(read_fast())
    payload = {"blob": "x" * 8000}
    published = 0
    channel_slow = "wsgateway_slow_consumers_total"
    while sample(gw, channel_slow, channel="trades") == 0 and published < 8000:
        # Four 8 KB messages a loop turn stay under the outbox of a client that reads.
        await gw.gateway.publish_many(
            [{"channel": "trades", "topic": "BTC-USD", "data": payload}] * 4
        )
        published += 4
        await asyncio.sleep(0)
    assert sample(gw, channel_slow, channel="trades") == 1
    assert sample(gw, "wsgateway_errors_total", channel="trades", type="slow_consumer") == 1
    assert (
        sample(gw, "wsgateway_updates_failed_total", channel="trades", reason="slow_consumer") >= 1
    )
    # The fast client got every message, in order, without a gap.
    await until(lambda: len(received) == published, timeout=20)
    assert received == list(range(1, published + 1))
    # The slow client, once it reads again, finds the 1013 close frame after its backlog.
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(slow.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    reader.cancel()
    await fast.close()
    await until(lambda: gw.gateway.channels["trades"].state().connections == 0)


async def test_dead_peer_removed_after_missed_pongs(start_gateway: StartGateway) -> None:
    gw = await start_gateway(heartbeat=0.2)
    # A raw socket completes the handshake and then goes silent: it never answers a ping.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(
        b"GET /ws/ticker HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    status = await reader.readuntil(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101")
    channel = gw.gateway.channels["ticker"]
    await until(lambda: channel.state().connections == 1)
    await until(lambda: channel.state().connections == 0)
    assert sample(gw, "wsgateway_errors_total", channel="ticker", type="heartbeat_timeout") == 1
    assert (
        sample(gw, "wsgateway_disconnects_total", channel="ticker", reason="heartbeat_timeout") == 1
    )
    view = gw.gateway.metrics_json()["managers"]["ticker"]
    assert view["last_error"]["type"] == "heartbeat_timeout"
    writer.close()


def user_token(secret: str, user: str, expires_in: float | None = None) -> str:
    claims: dict[str, Any] = {"sub": user}
    if expires_in is not None:
        claims["exp"] = int(time.time() + expires_in)
    return jwt.encode(claims, secret, algorithm="HS256")


SECRET = "test-jwt-secret-0123456789abcdef"


async def test_user_channel_delivers_only_own_messages(start_gateway: StartGateway) -> None:
    gw = await start_gateway(Settings(jwt_secret=SECRET))
    alice = await websockets.connect(gw.ws_url("user", f"?token={user_token(SECRET, 'alice')}"))
    bob = await websockets.connect(
        gw.ws_url("user"),
        additional_headers={"Authorization": f"Bearer {user_token(SECRET, 'bob')}"},
    )
    assert await request(alice, {"type": "subscribe", "topics": ["*"], "id": 1}) == {
        "type": "subscribed",
        "topics": ["alice"],
        "positions": {"alice": {"seq": 0, "epoch": ""}},
        "id": 1,
    }
    assert await request(bob, {"type": "subscribe", "topics": ["bob"], "id": 1}) == {
        "type": "subscribed",
        "topics": ["bob"],
        "positions": {"bob": {"seq": 0, "epoch": ""}},
        "id": 1,
    }
    await gw.publish("user", "alice", {"order": 1})
    await gw.publish("user", "bob", {"order": 2})
    assert (await recv_json(alice))["data"] == {"order": 1}
    assert (await recv_json(bob))["data"] == {"order": 2}
    # Neither has anything else waiting: a ping's pong comes next.
    for ws in (alice, bob):
        assert (await request(ws, {"type": "ping", "id": 9}))["type"] == "pong"
        await ws.close()


async def test_expired_token_closes_with_1008(start_gateway: StartGateway) -> None:
    gw = await start_gateway(Settings(jwt_secret=SECRET))
    # exp is whole seconds: 2 s from now is at least 1 s away, time to connect under load.
    token = user_token(SECRET, "carol", expires_in=2)
    async with websockets.connect(gw.ws_url("user", f"?token={token}")) as ws:
        await request(ws, {"type": "subscribe", "topics": ["carol"]})
        assert await wait_closed(ws, timeout=5) == 1008
    assert sample(gw, "wsgateway_disconnects_total", channel="user", reason="token_expired") == 1


async def test_origin_not_allowed_answers_403(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(
        Settings(allowed_origins=("https://app.example.com", "https://*.desk.example.com"))
    )
    first = await bystander(gw)  # no Origin header: a program, not a browser page
    rejection = await refused(gw.ws_url("ticker"), origin=Origin("https://evil.example.net"))
    assert rejection.response.status_code == 403
    assert json.loads(rejection.response.body) == {
        "error": "forbidden_origin",
        "message": "origin 'https://evil.example.net' is not in allowed_origins",
    }
    assert (
        "rejected connection on ticker from 127.0.0.1: forbidden_origin: "
        "origin 'https://evil.example.net' is not in allowed_origins" in caplog.text
    )
    # The wildcard covers subdomains, not the domain itself.
    rejection = await refused(gw.ws_url("ticker"), origin=Origin("https://desk.example.com"))
    assert rejection.response.status_code == 403
    for origin in (
        "https://app.example.com",
        "https://APP.example.com",
        "https://ny.desk.example.com",
    ):
        async with websockets.connect(gw.ws_url("ticker"), origin=Origin(origin)) as ws:
            assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"
    assert rejected(gw, "forbidden_origin") == 2
    await still_served(gw, first)
    await first.close()
