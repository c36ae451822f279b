"""Heartbeats end to end: a gateway serving on a real socket (memory and Redis brokers), a
python-websockets client asking for ``"heartbeat": 1``: it gets the updates, then heartbeats
reporting the position they reached, until it asks for 0; a bad value is refused with
``bad_message`` and the connection stays."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from wsgateway.protocol import HEARTBEAT_RULE

from .conftest import RunningGateway, recv_json, request


@pytest.fixture
def gw(gw_on_each_broker: RunningGateway) -> RunningGateway:
    return gw_on_each_broker  # memory and redis (conftest)


async def test_heartbeats_report_the_position_of_the_updates_sent(gw: RunningGateway) -> None:
    await gw.publish("trades", "BTC-USD", {"px": 0})  # the topic has an epoch before we come
    async with websockets.connect(gw.ws_url("trades")) as ws:
        reply = await request(
            ws, {"type": "subscribe", "topics": ["BTC-USD"], "heartbeat": 1, "id": 1}
        )
        assert reply["type"] == "subscribed", reply
        position = reply["positions"]["BTC-USD"]
        assert position["seq"] == 1 and position["epoch"]
        for px in (1, 2, 3):
            await gw.publish("trades", "BTC-USD", {"px": px})
        # Read the updates and the heartbeats as they come (on a loaded machine one may
        # come between updates): no heartbeat reports a seq beyond the last update read.
        held = position["seq"]
        heartbeats: list[dict[str, Any]] = []
        while held < 4 or len(heartbeats) < 2 or heartbeats[-2]["topics"]["BTC-USD"]["seq"] < 4:
            frame = await recv_json(ws, timeout=5)
            if frame["type"] == "update":
                assert frame["seq"] == held + 1, frame
                held = frame["seq"]
                continue
            assert frame["type"] == "heartbeat", frame
            reported = frame["topics"]["BTC-USD"]
            assert reported["epoch"] == position["epoch"]
            assert position["seq"] <= reported["seq"] <= held, (frame, held)
            heartbeats.append(frame)
        first, second = heartbeats[-2:]
        expected = {"BTC-USD": {"seq": 4, "epoch": position["epoch"]}}
        assert first["topics"] == expected and second["topics"] == expected
        assert [h["n"] for h in heartbeats] == list(range(1, len(heartbeats) + 1))
        assert 0.5 < second["ts"] - first["ts"] < 3

        # 0 stops them: after its reply nothing but what we ask for (a heartbeat may have
        # been queued before the reply).
        await ws.send(json.dumps({"type": "subscribe", "topics": ["BTC-USD"], "heartbeat": 0}))
        while (frame := await recv_json(ws, timeout=5))["type"] == "heartbeat":
            pass
        assert frame["type"] == "subscribed", frame
        with pytest.raises(TimeoutError):
            await recv_json(ws, timeout=2.5)  # 2.5 heartbeat intervals


async def test_a_bad_heartbeat_is_refused_and_the_connection_stays(gw: RunningGateway) -> None:
    async with websockets.connect(gw.ws_url("trades")) as ws:
        for bad in (-1, 3601, 0.5, "5", True):
            reply = await request(
                ws, {"type": "subscribe", "topics": ["BTC-USD"], "heartbeat": bad, "id": 7}
            )
            assert reply == {
                "type": "error",
                "code": "bad_message",
                "message": HEARTBEAT_RULE,
                "id": 7,
            }
        assert (await request(ws, {"type": "ping", "id": 8}))["type"] == "pong"
        # Nothing was subscribed by the refused frames, and no heartbeat was started.
        await gw.publish("trades", "BTC-USD", {"px": 1})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.5)
        assert gw.gateway.channels["trades"].footprint()["heartbeats"] == 0
