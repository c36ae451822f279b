"""Drain over real sockets: POST /api/drain and SIGTERM, 1012 in batches, then exit."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from wsgateway import Settings

from .conftest import RunningGateway, StartGateway, request, until
from .processes import GatewayNode, http_json

pytestmark = pytest.mark.e2e

TOKEN = "drain-test-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(gw: RunningGateway, path: str, headers: dict[str, str] | None = None) -> tuple:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.http + path, headers=headers) as response,
    ):
        return response.status, await response.json()


async def connect_clients(gw: RunningGateway, count: int) -> list[websockets.ClientConnection]:
    clients = []
    for i in range(count):
        ws = await websockets.connect(gw.ws_url(("ticker", "trades")[i % 2]))
        assert (await request(ws, {"type": "subscribe", "topics": ["X"]}))["type"] == "subscribed"
        clients.append(ws)
    return clients


async def closed_at(ws: websockets.ClientConnection, timeout: float) -> float:
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return time.monotonic()


def disconnects(gw: RunningGateway, reason: str) -> float:
    """wsgateway_disconnects_total{reason} over all channels, from the registry."""
    registry = gw.gateway.registry
    return sum(
        registry.get_sample_value(
            "wsgateway_disconnects_total", {"channel": channel, "reason": reason}
        )
        or 0.0
        for channel in gw.gateway.channels
    )


async def test_post_drain_closes_every_client_with_1012_in_batches(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(Settings(publish_token=TOKEN, drain_seconds=1.0))
    clients = await connect_clients(gw, 20)
    assert (await gw.get_json("/readyz")) == {"ready": True}

    started = time.monotonic()
    status, body = await post(gw, "/api/drain", AUTH)
    assert status == 202
    assert body == {"draining": True, "started": True, "clients": 20, "seconds": 1.0, "closed": 0}
    # At once: not ready, and new clients refused (before any batch could have run out).
    async with aiohttp.ClientSession() as session, session.get(gw.http + "/readyz") as r:
        assert r.status == 503 and await r.json() == {"ready": False, "reason": "draining"}
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(gw.ws_url("ticker"))
    assert refused.value.response.status_code == 503
    # Idempotent: a second call starts nothing and says so.
    status, again = await post(gw, "/api/drain", AUTH)
    assert status == 202 and again["started"] is False and again["clients"] == 20

    times = await asyncio.gather(*(closed_at(ws, 10) for ws in clients))
    for ws in clients:
        assert ws.close_code == 1012 and ws.close_reason == "draining"
    # Spread: the batches run from 0 to 0.9 s after the start, 10 of them.
    assert max(times) - started >= 0.85
    assert len({round(t - started, 1) for t in times}) >= 3  # not one wave (loose: CI stalls)
    await asyncio.wait_for(gw.gateway.drained.wait(), 5)
    await until(lambda: disconnects(gw, "draining") == 20)
    assert disconnects(gw, "shutdown") == 0 and disconnects(gw, "client_closed") == 0


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("settings", "headers", "expected"),
    [
        (Settings(publish_token=TOKEN), {}, (401, "unauthorized")),
        (
            Settings(publish_token=TOKEN),
            {"Authorization": "Bearer wrong-token-xxxxxxxx"},
            (401, "unauthorized"),
        ),
        # Without a token, the loopback rule: only as a local program would send it.
        (Settings(), {}, (415, "unsupported_media_type")),
        (Settings(), {**JSON, "Origin": "http://evil.example"}, (403, "forbidden_origin")),
        (Settings(), {**JSON, "X-Forwarded-For": "1.2.3.4"}, (403, "forbidden")),
    ],
)
async def test_drain_is_refused_as_a_publish_would_be(
    start_gateway: StartGateway,
    settings: Settings,
    headers: dict[str, str],
    expected: tuple[int, str],
) -> None:
    gw = await start_gateway(replace(settings, drain_seconds=0.0))
    status, body = await post(gw, "/api/drain", headers)
    assert (status, body["error"]) == expected
    assert gw.gateway.readiness() is None and not gw.gateway.draining


async def test_loopback_drain_without_a_token(start_gateway: StartGateway) -> None:
    gw = await start_gateway(Settings(drain_seconds=0.0))
    clients = await connect_clients(gw, 2)
    status, body = await post(gw, "/api/drain", {"Content-Type": "application/json"})
    assert status == 202 and body["clients"] == 2 and body["seconds"] == 0.0
    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1012


async def test_a_drain_with_nobody_connected_is_over_at_once(start_gateway: StartGateway) -> None:
    gw = await start_gateway(Settings(publish_token=TOKEN, drain_seconds=600.0))
    status, body = await post(gw, "/api/drain", AUTH)
    assert status == 202 and body["clients"] == 0 and body["seconds"] == 0.0
    await asyncio.wait_for(gw.gateway.drained.wait(), 5)


async def test_hurry_closes_the_rest_at_once(start_gateway: StartGateway) -> None:
    gw = await start_gateway(Settings(drain_seconds=600.0))
    clients = await connect_clients(gw, 10)
    status = gw.gateway.drain()
    assert status.clients == 10 and status.seconds == 600.0
    gw.gateway.hurry_drain()
    await asyncio.wait_for(gw.gateway.drained.wait(), 10)
    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1012


async def test_app_cleanup_during_a_drain_closes_the_rest_with_1001(
    start_gateway: StartGateway,
) -> None:
    """What an embedding application's cleanup (and TestServer.close) does: no waiting."""
    gw = await start_gateway(Settings(drain_seconds=600.0))
    clients = await connect_clients(gw, 10)
    gw.gateway.drain()
    await gw.server.close()
    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 10)
    codes = [ws.close_code for ws in clients]
    # The plan's first batch (at 0 s) may have gone with 1012 already; the rest get 1001.
    assert set(codes) <= {1001, 1012} and codes.count(1001) >= 9
    assert not gw.gateway.drained.is_set()


async def test_cleanup_without_a_drain_still_closes_with_1001(start_gateway: StartGateway) -> None:
    gw = await start_gateway(Settings(drain_seconds=600.0))
    clients = await connect_clients(gw, 3)
    await gw.server.close()
    for ws in clients:
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1001


# -- wsgateway serve -------------------------------------------------------------------------


def node(drain_seconds: float) -> GatewayNode:
    return GatewayNode(
        env={
            "WSGATEWAY_PUBLISH_TOKEN": TOKEN,
            "WSGATEWAY_DRAIN_SECONDS": str(drain_seconds),
            "WSGATEWAY_CLOSE_TIMEOUT": "2",
        }
    )


async def connect_to(port: int, count: int) -> list[websockets.ClientConnection]:
    return [await websockets.connect(f"ws://127.0.0.1:{port}/ws/ticker") for _ in range(count)]


async def test_sigterm_drains_then_exits_0() -> None:
    with node(drain_seconds=1.0) as server:
        clients = await connect_to(server.port, 10)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        times = await asyncio.gather(*(closed_at(ws, 15) for ws in clients))
        assert {ws.close_code for ws in clients} == {1012}
        assert max(times) - started >= 0.85  # spread over the drain, not all at once
        assert await asyncio.to_thread(server.wait, 20) == 0
    out = server.output()
    assert "draining: closing 10 client(s) with 1012 over 1.0 s" in out
    assert re.search(r"drained: closed 10 client\(s\) with 1012 in [\d.]+ s \(10 when", out)
    assert "wsgateway drained: shutting down" in out and "wsgateway stopped" in out


async def test_post_drain_makes_the_process_exit_0_once_drained() -> None:
    with node(drain_seconds=0.5) as server:
        clients = await connect_to(server.port, 4)
        status, body = await asyncio.to_thread(
            http_json, "POST", server.http + "/api/drain", None, AUTH
        )
        assert status == 202 and body["clients"] == 4
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 15)
            assert ws.close_code == 1012
        assert await asyncio.to_thread(server.wait, 20) == 0


async def test_a_second_sigterm_closes_the_rest_at_once() -> None:
    with node(drain_seconds=600.0) as server:
        clients = await connect_to(server.port, 10)
        server.signal(signal.SIGTERM)
        # Ready no more: the drain runs (over 10 minutes).
        for _ in range(200):
            status, _body = await asyncio.to_thread(http_json, "GET", server.http + "/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.02)
        assert status == 503
        server.signal(signal.SIGTERM)
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 15)
            assert ws.close_code == 1012
        assert await asyncio.to_thread(server.wait, 20) == 0
    assert "SIGTERM again: closing the remaining clients now" in server.output()


async def test_sigint_during_a_drain_stops_at_once_with_1001() -> None:
    with node(drain_seconds=600.0) as server:
        clients = await connect_to(server.port, 10)
        await asyncio.to_thread(http_json, "POST", server.http + "/api/drain", None, AUTH)
        server.signal(signal.SIGINT)
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 15)
        assert [ws.close_code for ws in clients].count(1001) >= 9
        assert await asyncio.to_thread(server.wait, 20) == 0


async def test_a_client_admitted_just_before_the_drain_is_closed_by_it_too(
    start_gateway: StartGateway,
) -> None:
    """The race: admitted before draining began, opened after the plan was made."""
    gw = await start_gateway(Settings(drain_seconds=0.5))
    planned = await connect_clients(gw, 2)
    assert gw.gateway.drain().clients == 2
    for channel in gw.gateway.channels.values():  # as if its admission had come first
        channel.draining = False
    late = await connect_clients(gw, 1)
    await asyncio.wait_for(gw.gateway.drained.wait(), 10)
    for ws in planned + late:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1012


# -- wsgateway serve --workers 2 ------------------------------------------------------------


def workers_node(redis_url: str) -> GatewayNode:
    return GatewayNode(
        "--workers",
        "2",
        "--broker",
        redis_url,
        env={
            "WSGATEWAY_PUBLISH_TOKEN": TOKEN,
            "WSGATEWAY_DRAIN_SECONDS": "1",
            "WSGATEWAY_CLOSE_TIMEOUT": "2",
        },
    )


@pytest.mark.parametrize("how", ["api", "sigterm"])
async def test_a_drain_of_a_workers_node_drains_every_worker(redis_server: Any, how: str) -> None:
    """POST /api/drain reaches one worker; the whole node drains (no worker is restarted)."""
    with workers_node(redis_server.url) as server:
        clients = await connect_to(server.port, 20)
        if how == "api":
            status, body = await asyncio.to_thread(
                http_json, "POST", server.http + "/api/drain", None, AUTH
            )
            assert status == 202 and 0 < body["clients"] <= 20
        else:
            server.signal(signal.SIGTERM)
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 15)
        assert [ws.close_code for ws in clients] == [1012] * 20
        assert await asyncio.to_thread(server.wait, 30) == 0
    assert "wsgateway stopped" in server.output()
