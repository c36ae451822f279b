"""The basic path end to end: subscribe, publish, receive, with python-websockets."""

from __future__ import annotations

import websockets

from .conftest import RunningGateway, recv_json, request


async def test_subscribe_publish_receive(gw: RunningGateway) -> None:
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
        assert reply == {
            "type": "subscribed",
            "topics": ["BTC-USD"],
            "positions": {"BTC-USD": {"seq": 0, "epoch": ""}},
            "id": 1,
        }
        await gw.publish("ticker", "BTC-USD", {"price": 1})
        await gw.publish("ticker", "BTC-USD", {"price": 2})
        first, second = await recv_json(ws), await recv_json(ws)
        assert first["type"] == "update" and first["channel"] == "ticker"
        assert first["topic"] == "BTC-USD" and first["data"] == {"price": 1}
        assert (first["seq"], second["seq"]) == (1, 2)
