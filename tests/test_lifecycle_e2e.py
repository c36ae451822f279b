"""No state outlives its owner: thousands of real connections later, everything is empty."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from .conftest import StartGateway, recv_json, request, until
from .fakes import IDLE_FOOTPRINT

pytestmark = pytest.mark.e2e

CYCLES = 2000
AT_ONCE = 50


async def test_thousands_of_cycles_leave_nothing_behind(start_gateway: StartGateway) -> None:
    gw = await start_gateway(connections_per_minute=100_000, max_connections_per_ip=1000)
    channel = gw.gateway.channels["ticker"]

    async def cycle(i: int) -> None:
        async with websockets.connect(gw.ws_url("ticker")) as ws:
            topics = [f"SYM-{i % 97}", f"SYM-{(i * 7) % 97}", "*" if i % 5 == 0 else "X"]
            reply = await request(ws, {"type": "subscribe", "topics": topics, "id": i})
            assert reply["type"] == "subscribed" and reply["id"] == i
            if i % 3 == 0:
                await request(ws, {"type": "unsubscribe", "topics": topics[:1]})
            if i % 10 == 0:  # some vanish without a close handshake
                ws.transport.abort()

    for start in range(0, CYCLES, AT_ONCE):
        await asyncio.gather(*(cycle(i) for i in range(start, start + AT_ONCE)))
        # Publishing in between exercises fan-out to connections that come and go.
        await gw.publish("ticker", f"SYM-{start % 97}", {"n": start})

    await until(lambda: channel.state().connections == 0, timeout=20)
    assert channel.footprint() == IDLE_FOOTPRINT
    # The admission window holds only the last minute's entries, never more than its limit.
    assert channel.admission_window() == CYCLES
    view = await gw.get_json("/api/ws/metrics")
    ticker = view["managers"]["ticker"]
    assert ticker["active_connections"] == 0 and ticker["total_connections"] == CYCLES
    assert ticker["subscriptions"] == 0 and ticker["topics"] == 0
    assert ticker["outbox_bytes"] == 0
    assert view["total_active_connections"] == 0

    # And the gateway still serves a newcomer normally.
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        await request(ws, {"type": "subscribe", "topics": ["NEWCOMER"]})  # no snapshot yet
        await gw.publish("ticker", "NEWCOMER", {"after": True})
        assert (await recv_json(ws))["data"] == {"after": True}
