"""The load generator's book payload (issue 9): what the publisher sends is a book message
the gateway accepts as it is, and the clients read its stamp back from the frames."""

from __future__ import annotations

import asyncio
import json
import time
from typing import cast

import aiohttp
import orjson

from wsgateway.book import Book, delta_data, parse_delta
from wsgateway.loadgen.client import OPEN, Client, Stats
from wsgateway.loadgen.config import Config
from wsgateway.loadgen.payload import BOOK_LEVELS, book_data, book_stamp
from wsgateway.loadgen.publisher import Publisher


def test_book_deltas_are_canonical_and_cycle_over_the_levels() -> None:
    datas = [book_data(i, 1764700000.5) for i in range(3 * BOOK_LEVELS)]
    for data in datas:
        delta = parse_delta(data)
        # already canonical: the gateway delivers exactly these strings
        assert [list(level) for level in delta.bids] == data["bids"]
        assert [list(level) for level in delta.asks] == data["asks"]
        assert data["asks"][0][1] == "1764700000.5"
    bids = {data["bids"][0][0] for data in datas}
    asks = {data["asks"][0][0] for data in datas}
    assert len(bids) == len(asks) == BOOK_LEVELS
    assert max(map(float, bids)) < min(map(float, asks))  # never a crossed book


def test_the_publisher_sends_book_messages_that_move_on_across_batches() -> None:
    cfg = Config(url="ws://x/ws/ticker", publish_url="http://x/api/publish", clients=1)
    cfg.payload = "book"
    publisher = Publisher(cfg, cast(aiohttp.ClientSession, None), {"T0": 7})
    first, deliveries = publisher.body(3)
    second, _ = publisher.body(3)
    assert deliveries == 21
    messages = orjson.loads(first)["messages"] + orjson.loads(second)["messages"]
    assert [m["topic"] for m in messages] == ["T0"] * 6
    asks = [m["data"]["asks"][0][0] for m in messages]
    assert len(set(asks)) == 6
    for m in messages:
        parse_delta(m["data"])
        assert abs(float(m["data"]["asks"][0][1]) - time.time()) < 3600


def update_frame(data: dict[str, object], seq: int, *, spaced: bool = False) -> bytes:
    """The update as the gateway sends it (or a peer relaying with stdlib json), unmasked."""
    update = {"type": "update", "channel": "ticker", "topic": "T0", "seq": seq, "data": data}
    text = json.dumps(update) if spaced else json.dumps(update, separators=(",", ":"))
    payload = text.encode()
    assert 126 <= len(payload) < 65536
    return bytes((0x81, 126)) + len(payload).to_bytes(2, "big") + payload


def open_client(stats: Stats) -> Client:
    loop = asyncio.new_event_loop()
    try:
        client = Client(stats, b"", b"", None, False, loop.create_future())
    finally:
        loop.close()
    client.phase = OPEN
    return client


def test_a_client_counts_book_updates_and_samples_the_ask_stamp() -> None:
    stats = Stats(book=True)
    stats.sampling = True
    client = open_client(stats)
    book = Book(max_levels=1000)
    stamp = time.time() - 0.25
    chunk = b""
    for i in range(3):
        delta = book.apply(parse_delta(book_data(i, stamp + i)))
        chunk += update_frame(delta_data(delta, book.checksum()), i + 1)
    client.data_received(chunk)
    # one sample per chunk, from its first update: the oldest stamp
    assert stats.delivered == 3 and len(stats.samples) == 1 and stats.unparsed == 0
    assert 0.2 < stats.samples[0] < 60

    client.data_received(update_frame(book_data(9, stamp), 4, spaced=True))  # a peer's spacing
    assert stats.delivered == 4 and len(stats.samples) == 2 and stats.samples[1] > 0.2


def test_book_stamp_wants_a_whole_quantity() -> None:
    assert book_stamp(b'{"data":{"bids":[],"asks":[["65000.5","1764700000.25"]]}}') == (
        b"1764700000.25"
    )
    assert book_stamp(b'"asks":[["65000.5","17647') is None  # cut by the chunk's end
    assert book_stamp(b'"asks":[]') is None
    assert book_stamp(b'{"t":1764700000.25}') is None
