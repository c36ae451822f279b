"""Conflation (issue 9, section 1): updates of one topic waiting for a lagging client merged
into one frame with ``from_seq``, on last and book channels only; and ``max_rate``, served
the same way. A Channel with fake transports and a fake clock; timers are fired by hand."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from wsgateway import protocol
from wsgateway.book import Book, Delta, delta_data, read_data
from wsgateway.brokers.base import History, Position, Update
from wsgateway.conflation import Pending, payload
from wsgateway.errors import BadMessage

from .fakes import EPOCH, IDLE_FOOTPRINT, Client, Harness, make_channel, subscribe

CONFLATED = "wsgateway_conflated_updates_total"


def frame_of(update: Update, channel: str = "ticker") -> bytes:
    epoch = update.epoch if update.seq == 1 else None
    return protocol.text_frame(
        protocol.update(channel, update.topic, update.seq, update.ts, update.data, epoch)
    )


def book_update(seq: int, delta: Delta, book: Book, topic: str = "BTC-USD") -> Update:
    changes = book.apply(delta)
    data = orjson.Fragment(orjson.dumps(delta_data(changes, book.checksum())))
    return Update("orderbook", topic, seq, EPOCH + seq, data, "e1")


def sent(client: Client) -> list[tuple[Any, ...]]:
    return [
        (m["type"], m.get("seq"), m.get("from_seq"), m.get("data"))
        for m in client.messages()
        if m["type"] != "subscribed"
    ]


async def next_turn() -> None:
    await asyncio.sleep(0)


# -- Pending, alone -----------------------------------------------------------------------


def test_a_last_entry_sends_the_newest_value_with_the_range_it_replaces() -> None:
    updates = [
        Update("ticker", "BTC-USD", seq, EPOCH + seq, {"px": seq}, "e1") for seq in (1, 2, 3)
    ]
    entry = Pending(updates[0], frame_of(updates[0]), book=False)
    assert entry.frame("ticker") == frame_of(updates[0])  # nothing merged: sent as it is
    assert entry.merge(updates[1], frame_of(updates[1]))
    assert entry.merge(updates[2], frame_of(updates[2]))
    frame = orjson.loads(payload(entry.frame("ticker")))
    assert frame == {
        "type": "update",
        "channel": "ticker",
        "topic": "BTC-USD",
        "seq": 3,
        "from_seq": 1,
        "ts": EPOCH + 3,
        "epoch": "e1",  # it starts the epoch, so it names it
        "data": {"px": 3},
    }
    assert entry.merged == 2


def test_an_entry_takes_only_the_next_update_of_its_epoch() -> None:
    first = Update("ticker", "T", 4, EPOCH, 1, "e1")
    entry = Pending(first, frame_of(first), book=False)
    for other in (
        Update("ticker", "T", 6, EPOCH, 2, "e1"),
        Update("ticker", "T", 5, EPOCH, 2, "e2"),
    ):
        assert not entry.merge(other, frame_of(other))
    assert entry.update is first


def test_a_book_entry_merges_levels_and_keeps_the_newest_checksum() -> None:
    server, client = Book(), Book()
    first = book_update(1, Delta(bids=(("10", "1"), ("9", "1")), asks=(("11", "1"),)), server)
    client.apply(read_data(orjson.loads(payload(frame_of(first, "orderbook")))["data"])[0])
    rest = [
        book_update(2, Delta(bids=(("10", "2"),)), server),
        book_update(3, Delta(bids=(("9", "0"),), asks=(("12", "5"),)), server),
        book_update(4, Delta(bids=(("10", "3"),)), server),
    ]
    entry = Pending(rest[0], frame_of(rest[0], "orderbook"), book=True)
    for update in rest[1:]:
        assert entry.merge(update, frame_of(update, "orderbook"))
    message = orjson.loads(payload(entry.frame("orderbook")))
    assert (message["seq"], message["from_seq"]) == (4, 2)
    assert message["data"] == {
        "bids": [["10", "3"], ["9", "0"]],
        "asks": [["12", "5"]],
        "checksum": server.checksum(),
    }
    delta, crc = read_data(message["data"])
    client.apply(delta)
    assert client.snapshot() == server.snapshot() and client.checksum() == crc


def test_a_book_entry_past_a_snapshot_publish_is_a_whole_book() -> None:
    server = Book()
    updates = [
        book_update(5, Delta(bids=(("10", "1"),)), server),
        book_update(6, Delta(bids=(("8", "1"), ("7", "1")), snapshot=True), server),
        book_update(7, Delta(bids=(("7", "0"), ("6", "2"))), server),
    ]
    entry = Pending(updates[0], frame_of(updates[0], "orderbook"), book=True)
    for update in updates[1:]:
        entry.merge(update, frame_of(update, "orderbook"))
    data = orjson.loads(payload(entry.frame("orderbook")))["data"]
    assert data["snapshot"] is True
    assert data["bids"] == [["8", "1"], ["6", "2"]]  # the removed level is gone, not "0"
    copy = Book()
    copy.apply(read_data(data)[0])
    assert copy.snapshot() == server.snapshot()


# -- in the channel -----------------------------------------------------------------------


def behind(h: Harness, backlog: int) -> tuple[Client, Client]:
    """A fast client and one whose kernel holds ``backlog`` bytes, both on BTC-USD."""
    fast, slow = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (fast, slow):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    slow.conn.backlog = slow.transport.buffer_size = backlog
    return fast, slow


@pytest.mark.parametrize("mode", ["last", "book"])
async def test_a_client_past_the_soft_bound_gets_waiting_updates_merged(mode: str) -> None:
    h = make_channel("ticker", mode=mode, max_outbox_bytes=4096)
    fast, slow = behind(h, 3000)  # past half of max_outbox_bytes, under the limit
    book = Book()
    for seq in range(1, 6):
        if mode == "book":
            update = book_update(seq, Delta(bids=((str(seq), "1"),)), book)
        else:
            update = Update("ticker", "BTC-USD", seq, EPOCH, {"px": seq}, "e1")
        h.channel.broadcast(update)
    await next_turn()
    assert [m[1:3] for m in sent(fast)] == [(seq, None) for seq in range(1, 6)]
    assert [m[1:3] for m in sent(slow)] == [(5, 1)]
    assert h.value(CONFLATED) == 4
    assert slow.conn.conflating is None  # written: nothing left open


async def test_a_stream_channel_never_conflates() -> None:
    h = make_channel("trades", max_outbox_bytes=4096)
    _, slow = behind(h, 3000)
    for seq in range(1, 4):
        h.channel.broadcast(Update("trades", "BTC-USD", seq, EPOCH, {"q": seq}, "e1"))
    await next_turn()
    assert [m[1:3] for m in sent(slow)] == [(1, None), (2, None), (3, None)]
    assert h.value(CONFLATED) == 0


async def test_a_client_under_the_soft_bound_gets_every_update() -> None:
    h = make_channel("ticker", mode="last", max_outbox_bytes=65536)
    _, slow = behind(h, 1000)
    for seq in range(1, 4):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, {"px": seq}, "e1"))
    await next_turn()
    assert [m[1:3] for m in sent(slow)] == [(1, None), (2, None), (3, None)]


async def test_a_frame_that_is_not_an_update_closes_the_merge_before_it() -> None:
    h = make_channel("ticker", mode="last", max_outbox_bytes=4096)
    _, slow = behind(h, 3000)
    for seq in (1, 2):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, {"px": seq}, "e1"))
    h.channel.send(slow.conn, protocol.pong(7, EPOCH), "pong")
    for seq in (3, 4):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, {"px": seq}, "e1"))
    await next_turn()
    assert [m[:3] for m in sent(slow)] == [("update", 2, 1), ("pong", None, None), ("update", 4, 3)]


async def test_topics_are_merged_each_on_their_own_in_order() -> None:
    h = make_channel("ticker", mode="last", max_outbox_bytes=4096)
    slow = h.open("10.0.0.2")
    subscribe(h.channel, slow.conn, ["A", "B"])
    slow.conn.backlog = slow.transport.buffer_size = 3000
    for seq in (1, 2, 3):
        for topic in ("A", "B"):
            h.channel.broadcast(Update("ticker", topic, seq, EPOCH, seq, "e1"))
    await next_turn()
    assert [(m["topic"], m["seq"], m["from_seq"]) for m in slow.messages()] == [
        ("A", 3, 1),
        ("B", 3, 1),
    ]


# -- max_rate -----------------------------------------------------------------------------


def release(h: Harness, client: Client, topic: str = "BTC-USD") -> None:
    """Fire the client's max_rate timer now, as the event loop would when it is due."""
    caps = h.channel._caps
    cap = caps.cap(client.conn, topic)
    assert cap.timer is not None
    cap.timer.cancel()
    caps.release(client.conn, cap)


async def test_max_rate_sends_the_first_update_and_merges_the_rest_of_the_interval() -> None:
    h = make_channel("ticker", mode="last")
    fast, capped = h.open("10.0.0.1"), h.open("10.0.0.2")
    subscribe(h.channel, fast.conn, ["BTC-USD"])
    subscribe(h.channel, capped.conn, ["BTC-USD"], max_rate=2)
    for seq in (1, 2, 3, 4):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, {"px": seq}, "e1"))
    await next_turn()
    assert [m[1:3] for m in sent(capped)] == [(1, None)]
    h.clock.advance(0.5)
    release(h, capped)
    h.channel.broadcast(Update("ticker", "BTC-USD", 5, EPOCH, {"px": 5}, "e1"))
    await next_turn()
    assert [m[1:4] for m in sent(capped)] == [(1, None, {"px": 1}), (4, 2, {"px": 4})]
    assert len(sent(fast)) == 5
    h.clock.advance(0.5)
    release(h, capped)
    await next_turn()
    assert [m[1:3] for m in sent(capped)][-1] == (5, None)
    assert h.value(CONFLATED) == 2


async def test_max_rate_is_refused_on_a_stream_channel_and_for_the_wildcard() -> None:
    h = make_channel("trades")
    client = h.open()
    with pytest.raises(BadMessage, match=r"max_rate.*trades is in stream mode"):
        h.channel.subscribe(client.conn, ["BTC-USD"], None, 5)
    h = make_channel("ticker", mode="last")
    client = h.open()
    with pytest.raises(BadMessage, match='not "\\*"'):
        h.channel.subscribe(client.conn, ["*"], None, 5)
    assert client.conn.topics == set()


async def test_max_rate_0_lifts_the_cap_and_what_was_held_goes_out_first() -> None:
    h = make_channel("ticker", mode="last")
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"], max_rate=1)
    for seq in (1, 2, 3):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, seq, "e1"))
    subscribe(h.channel, client.conn, ["BTC-USD"], max_rate=0)
    h.channel.broadcast(Update("ticker", "BTC-USD", 4, EPOCH, 4, "e1"))
    await next_turn()
    assert [m[1:3] for m in sent(client)] == [(1, None), (3, 2), (4, None)]
    assert h.channel.footprint()["capped"] == 0


async def test_a_capped_subscription_leaves_nothing_behind() -> None:
    h = make_channel("ticker", mode="last")
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD"], max_rate=10)
    for seq in (1, 2):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, seq, "e1"))
    assert h.channel.footprint()["capped"] == 2
    h.channel.unsubscribe(client.conn, ["BTC-USD"])
    h.channel.remove(client.conn, "client_closed")
    await next_turn()
    assert h.channel.footprint() == IDLE_FOOTPRINT


async def test_a_reset_sends_what_max_rate_held_back_first() -> None:
    h = make_channel("ticker", mode="last")
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"], max_rate=1)
    for seq in (1, 2, 3):
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, seq, "e1"))
    h.channel.reset_topic("BTC-USD", Position("e2", 0))
    await next_turn()
    assert [m[:3] for m in sent(client)] == [
        ("update", 1, None),
        ("update", 3, 2),
        ("reset", 0, None),
    ]
    # The heartbeat reports a capped topic only when nothing is held back for it.
    h.clock.advance(1)  # the interval the release started is over: the next goes at once
    h.channel.broadcast(Update("ticker", "BTC-USD", 1, EPOCH, 1, "e2"))
    assert h.channel.heartbeat_positions(client.conn) == {"BTC-USD": {"seq": 1, "epoch": "e2"}}
    h.channel.broadcast(Update("ticker", "BTC-USD", 2, EPOCH, 2, "e2"))
    assert h.channel.heartbeat_positions(client.conn) == {}


async def test_a_capped_client_joining_mid_feed_gets_its_catch_up_at_its_rate() -> None:
    h = make_channel("ticker", mode="last")
    client = h.open()
    joining = h.channel.subscribe(client.conn, ["BTC-USD"], None, 1)
    for seq in (1, 2, 3, 4):  # published while the broker is asked: buffered
        h.channel.broadcast(Update("ticker", "BTC-USD", seq, EPOCH, seq, "e1"))
    (recovery,) = joining.pending
    outcome = h.channel.complete(recovery, History(Position("", 0), []))
    assert outcome is not None and len(outcome.updates) == 4
    h.channel.catch_up(client.conn, "BTC-USD", outcome)
    await next_turn()
    assert [m[1:3] for m in sent(client)] == [(1, None)]  # the rest waits for the interval
    h.clock.advance(1)
    release(h, client)
    await next_turn()
    assert [m[1:3] for m in sent(client)] == [(1, None), (4, 2)]
