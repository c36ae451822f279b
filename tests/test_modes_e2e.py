"""Topic modes end to end (issue 9, section 1): a gateway on a real socket, on the memory
and Redis brokers, python-websockets clients. A ticker (last) subscriber gets the latest
value as a snapshot, an orderbook (book) subscriber the whole book then the changes after
it, with checksums it can verify; a bad book publish is refused naming its field and
publishes nothing; max_rate is refused on a stream channel; a resume that cannot be
recovered gets a snapshot."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
import websockets

from wsgateway.book import Book, read_data
from wsgateway.transports import CONFLATING_UNSENT_BYTES

from .conftest import RunningGateway, recv_json, request


@pytest.fixture
def gw(gw_on_each_broker: RunningGateway) -> RunningGateway:
    return gw_on_each_broker  # memory and redis (conftest)


async def post(gw: RunningGateway, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.http + "/api/publish", json=body) as response,
    ):
        return response.status, await response.json()


async def test_a_ticker_subscriber_gets_the_latest_value_first(gw: RunningGateway) -> None:
    for px in (1, 2, 3):
        await gw.publish("ticker", "BTC-USD", {"px": px})
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD", "NEW"], "id": 1})
        assert reply["type"] == "subscribed"
        position = reply["positions"]["BTC-USD"]
        assert position["seq"] == 3
        assert reply["positions"]["NEW"] == {"seq": 0, "epoch": ""}
        snapshot = await recv_json(ws)
        assert snapshot == {
            "type": "snapshot",
            "channel": "ticker",
            "topic": "BTC-USD",
            "seq": 3,
            "epoch": position["epoch"],
            "ts": snapshot["ts"],
            "data": {"px": 3},
        }
        await gw.publish("ticker", "BTC-USD", {"px": 4})
        update = await recv_json(ws)
        assert (update["type"], update["seq"], update["data"]) == ("update", 4, {"px": 4})
        # Subscribing again to a topic held: no second snapshot.
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 2})
        assert reply["type"] == "subscribed"
        with pytest.raises(TimeoutError):
            await recv_json(ws, timeout=0.5)


async def test_a_book_subscriber_rebuilds_the_book_and_verifies_it(gw: RunningGateway) -> None:
    status, _ = await post(
        gw,
        {
            "channel": "orderbook",
            "topic": "BTC-USD",
            "data": {"snapshot": True, "bids": [[100, 1], ["99.50", "2"]], "asks": [[101, 1]]},
        },
    )
    assert status == 202 or status == 200
    await gw.publish("orderbook", "BTC-USD", {"bids": [["100", "0"], [99.75, "3"]]})
    book = Book()
    async with websockets.connect(gw.ws_url("orderbook")) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
        assert reply["positions"]["BTC-USD"]["seq"] == 2
        snapshot = await recv_json(ws)
        assert snapshot["type"] == "snapshot" and snapshot["seq"] == 2
        assert snapshot["data"]["bids"] == [["99.75", "3"], ["99.5", "2"]]
        assert snapshot["data"]["asks"] == [["101", "1"]]
        delta, crc = read_data(snapshot["data"])
        book.apply(delta)
        assert crc == book.checksum()
        # Publish while reading: every change applies on top, each checksum verifies.
        for i in range(20):
            await gw.publish("orderbook", "BTC-USD", {"asks": [[101 + i / 10, i % 3]]})
        for seq in range(3, 23):
            update = await recv_json(ws)
            assert update["seq"] == seq, update
            delta, crc = read_data(update["data"])
            book.apply(delta)
            assert crc == book.checksum(), update
    async with websockets.connect(gw.ws_url("orderbook")) as ws:
        await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
        snapshot = await recv_json(ws)
        assert snapshot["seq"] == 22
        assert read_data(snapshot["data"]) == (book.snapshot(), book.checksum())


async def test_a_bad_book_publish_is_refused_whole_with_its_field(gw: RunningGateway) -> None:
    body = {
        "messages": [
            {"channel": "orderbook", "topic": "X", "data": {"bids": [["1", "1"]]}},
            {"channel": "orderbook", "topic": "X", "data": {"bids": [["1", "-1"]]}},
        ]
    }
    status, answer = await post(gw, body)
    assert status == 400
    assert answer["error"] == "bad_request"
    assert answer["field"] == "messages[1].data.bids[0][1]"
    assert "qty must be a non-negative decimal" in answer["message"]
    async with websockets.connect(gw.ws_url("orderbook")) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": ["X"], "id": 1})
        assert reply["positions"]["X"] == {"seq": 0, "epoch": ""}  # nothing was published


async def test_max_rate_is_refused_on_trades_and_the_connection_stays(gw: RunningGateway) -> None:
    async with websockets.connect(gw.ws_url("trades")) as ws:
        reply = await request(
            ws, {"type": "subscribe", "topics": ["BTC-USD"], "max_rate": 5, "id": 3}
        )
        assert reply["type"] == "error" and reply["code"] == "bad_message", reply
        assert "trades is in stream mode" in reply["message"]
        for bad in (-1, 1001, "5", True):
            reply = await request(
                ws, {"type": "subscribe", "topics": ["BTC-USD"], "max_rate": bad, "id": 4}
            )
            assert reply["code"] == "bad_message", reply
        assert (await request(ws, {"type": "ping", "id": 5}))["type"] == "pong"


async def test_max_rate_on_a_ticker_conflates_and_delivers_the_newest(gw: RunningGateway) -> None:
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        reply = await request(
            ws, {"type": "subscribe", "topics": ["ETH-USD"], "max_rate": 2, "id": 1}
        )
        assert reply["type"] == "subscribed", reply
        for px in range(1, 11):
            await gw.publish("ticker", "ETH-USD", {"px": px})
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["seq"] < 10:
            frames.append(await recv_json(ws, timeout=5))
        assert frames[-1]["data"] == {"px": 10}
        held = 0
        for frame in frames:
            assert frame.get("from_seq", frame["seq"]) == held + 1, frames
            held = frame["seq"]
        assert len(frames) < 10  # at 2 a second, ten quick publishes cannot all go alone


async def test_a_resume_that_cannot_be_recovered_gets_a_snapshot(gw: RunningGateway) -> None:
    await gw.publish("ticker", "SOL-USD", {"px": 1})
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "topics": ["SOL-USD"],
                    "since": {"SOL-USD": {"seq": 7, "epoch": "gone"}},
                    "id": 1,
                }
            )
        )
        reply = await recv_json(ws)
        assert reply["positions"]["SOL-USD"]["recovered"] is False
        snapshot = await recv_json(ws)
        assert (snapshot["type"], snapshot["seq"], snapshot["data"]) == ("snapshot", 1, {"px": 1})
    await asyncio.sleep(0)


async def test_a_conflating_channel_lets_the_kernel_hold_few_unsent_bytes(
    gw: RunningGateway,
) -> None:
    # Bytes in the kernel cannot be merged: on last and book channels it may hold only a few
    # unsent (TCP_NOTSENT_LOWAT); a stream channel keeps the kernel's default.
    async with (
        websockets.connect(gw.ws_url("ticker")) as ticker,
        websockets.connect(gw.ws_url("trades")) as trades,
    ):
        for ws in (ticker, trades):
            assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"
        sizes = {}
        for name in ("ticker", "trades"):
            (conn,) = gw.gateway.channels[name].connections
            sock = conn.transport.get_extra_info("socket")
            sizes[name] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
        assert sizes["ticker"] == CONFLATING_UNSENT_BYTES
        assert sizes["trades"] != CONFLATING_UNSENT_BYTES
