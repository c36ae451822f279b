"""The Redis broker's pure parts: the pub/sub framing and the hand-off to the relay."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from wsgateway.brokers import RESYNC, Update
from wsgateway.brokers.handoff import Handoff
from wsgateway.brokers.redis_codec import decode_updates


def frame(ts: str, *updates: tuple[int, str, bytes, bytes]) -> bytes:
    """A frame as scripts/publish.lua builds it: each topic listed once, with the seq of
    its first update in the frame and its epoch; then each update's topic index and data
    length (a topic's updates must have consecutive seqs, as the script numbers them)."""
    listed: dict[bytes, int] = {}
    table: list[bytes] = []
    layout: list[bytes] = []
    for seq, epoch, topic, data in updates:
        if topic not in listed:
            listed[topic] = len(listed) + 1
            table.append(b"%d %s %d" % (seq, epoch.encode(), len(topic)))
        layout.append(b"%d %d" % (listed[topic], len(data)))
    header = b"%d " % len(listed) + b" ".join(table + layout)
    body = b"".join(listed) + b"".join(data for _, _, _, data in updates)
    return b"W2 " + ts.encode() + b" " + header + b"\n" + body


def test_a_frame_decodes_to_updates_in_order_with_any_bytes_in_topics_and_data() -> None:
    topic = "sp ace\nnew:{x}é".encode()
    payload = frame("12.5", (7, "e1", topic, b'"a\\nb"'), (1, "e2", b"T", b"[1, 2]"))
    first, second = decode_updates("ticker", payload)
    assert (first.channel, first.topic, first.seq, first.ts, first.epoch) == (
        "ticker",
        "sp ace\nnew:{x}é",
        7,
        12.5,
        "e1",
    )
    assert isinstance(first.data, orjson.Fragment)
    assert orjson.dumps({"d": first.data}) == b'{"d":"a\\nb"}'
    assert (second.topic, second.seq, second.epoch) == ("T", 1, "e2")
    assert orjson.dumps(second.data) == b"[1, 2]"


def test_updates_of_topics_interleaved_keep_their_order_and_count_on_per_topic() -> None:
    payload = frame(
        "3.0",
        (41, "e1", b"A", b"1"),
        (5, "e2", b"B", b"2"),
        (42, "e1", b"A", b"3"),
        (43, "e1", b"A", b"4"),
        (6, "e2", b"B", b"5"),
    )
    updates = decode_updates("ticker", payload)
    assert [(u.topic, u.seq, u.epoch, orjson.dumps(u.data)) for u in updates] == [
        ("A", 41, "e1", b"1"),
        ("B", 5, "e2", b"2"),
        ("A", 42, "e1", b"3"),
        ("A", 43, "e1", b"4"),
        ("B", 6, "e2", b"5"),
    ]
    # the same objects as Update(...) builds: frozen, equal, hashable
    assert updates[0] == Update("ticker", "A", 41, 3.0, updates[0].data, "e1")
    with pytest.raises(AttributeError):
        updates[0].seq = 1  # type: ignore[misc]
    assert hash(updates[0]) == hash(Update("ticker", "A", 41, 3.0, updates[0].data, "e1"))


@pytest.mark.parametrize(
    "payload",
    [
        b"W1 1.0 1 e 1 1\nTx",  # another version (the one before)
        b"W2 1.0 1 1 e 1 1\nTx",  # a field missing
        b"W2 1.0 1 1 e 1 1 2\nTx",  # shorter than said
        b"W2 1.0 1 1 e 1 1 1\nTxy",  # longer than said
        b"W2 1.0 1 1 e 1 1 1",  # no body line
        b"W2 x 1 1 e 1 1 1\nTx",  # not a number
        b"W2 1.0 1 1 e 1 2 1\nTx",  # a topic index past the topics listed
        b"W2 1.0 1 1 e 1 0 1\nTx",  # topic index 0
        b"W2 1.0 2 1 e 1 1 e 1 1\nTxy",  # a field missing (two topics listed)
        b"W2 1.0 0 1 1\nx",  # no topic listed
    ],
)
def test_a_malformed_frame_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_updates("ticker", payload)


def batch(n: int = 1) -> list[Update]:
    return [Update("ticker", "T", i, 0.0, None, "e") for i in range(1, n + 1)]


async def test_a_full_handoff_drops_and_owes_a_resync_before_the_next_batch() -> None:
    handoff = Handoff(max_batches=2, max_messages=100)
    a, b, c, d = batch(), batch(), batch(), batch()
    assert handoff.put(a) and handoff.put(b)
    assert not handoff.put(c)  # full: dropped, counted
    assert handoff.dropped == 1
    assert await handoff.get() is a
    assert handoff.put(d)  # room: the RESYNC goes first
    assert [await handoff.get() for _ in range(3)] == [b, RESYNC, d]


async def test_the_message_bound_drops_too_but_an_empty_handoff_takes_any_batch() -> None:
    handoff = Handoff(max_batches=10, max_messages=5)
    big = batch(50)
    assert handoff.put(big)  # alone: never dropped, or it could never pass
    assert not handoff.put(batch())
    assert await handoff.get() is big
    # nothing queued after the drop: the RESYNC is handed over at once
    assert await handoff.get() is RESYNC


async def test_a_resync_is_queued_in_order_and_close_ends_the_consumer() -> None:
    handoff = Handoff(max_batches=10, max_messages=100)
    a = batch()
    handoff.put(a)
    handoff.resync()
    handoff.close()
    assert [await handoff.get() for _ in range(3)] == [a, RESYNC, None]


async def test_the_consumer_waits_for_the_next_batch() -> None:
    handoff = Handoff(max_batches=10, max_messages=100)
    waiting = asyncio.create_task(handoff.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    a = batch()
    handoff.put(a)
    assert await asyncio.wait_for(waiting, 5) is a
