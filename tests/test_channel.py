"""Channel: admission, subscriptions, fan-out, slow consumers, cleanup and their metrics.

No sockets: connections write to FakeTransports and the clock is a FakeClock. Fan-out
schedules its flush with ``loop.call_soon``, so a test that broadcasts awaits
``asyncio.sleep(0)`` once to let that single flush run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from wsgateway import channel as channel_module
from wsgateway import protocol
from wsgateway.admission import MAX_HANDSHAKE_RETRY
from wsgateway.brokers.base import Position, Update
from wsgateway.channel import HOLD_BYTES, HOLD_RETRY_SECONDS, REJECTION_LOG_INTERVAL
from wsgateway.errors import (
    ChannelFull,
    ConnectionRateLimited,
    Draining,
    ForbiddenTopic,
    HandshakeRateLimited,
    TooManyConnectionsFromAddress,
    TooManyTopics,
)
from wsgateway.metrics import ChannelState
from wsgateway.outbox import SlowConsumerRule
from wsgateway.transports import direct_fd

from .conftest import until
from .fakes import (
    EPOCH,
    IDLE_FOOTPRINT,
    Client,
    FakeTransport,
    Harness,
    decode_frame_payloads,
    decode_frames,
    make_channel,
    make_update,
    subscribe,
)

SENT = "wsgateway_updates_sent_total"
FRAMES = "wsgateway_frames_sent_total"
FAILED = "wsgateway_updates_failed_total"
ERRORS = "wsgateway_errors_total"
LAST_ERROR = "wsgateway_last_error_timestamp_seconds"
SLOW = "wsgateway_slow_consumers_total"
REJECTED = "wsgateway_connections_rejected_total"
PUBLISHED = "wsgateway_messages_published_total"
DISCONNECTS = "wsgateway_disconnects_total"
CONNECTIONS = "wsgateway_connections_total"
RATE_LIMIT_HITS = "wsgateway_rate_limit_hits_total"


async def next_turn() -> None:
    """Let the flush that fan-out scheduled with ``call_soon`` run."""
    await asyncio.sleep(0)


def seqs(client: Client, topic: str | None = None) -> list[int]:
    return [
        m["seq"]
        for m in client.messages()
        if m["type"] == "update" and (topic is None or m["topic"] == topic)
    ]


def updates(client: Client) -> list[tuple[str, int]]:
    return [(m["topic"], m["seq"]) for m in client.messages() if m["type"] == "update"]


def frame_size(update: Update) -> int:
    """Bytes of the WebSocket frame of ``update``, computed without wsgateway.protocol."""
    payload = orjson.dumps(
        {
            "type": "update",
            "channel": update.channel,
            "topic": update.topic,
            "seq": update.seq,
            "ts": update.ts,
            "data": update.data,
        }
    )
    length = len(payload)
    return length + (2 if length < 126 else 4 if length < 65536 else 10)


def update_of_size(size: int, topic: str = "BTC-USD", seq: int = 1) -> Update:
    """An update whose frame is exactly ``size`` bytes."""
    for pad in range(size):
        update = make_update(topic, seq, {"p": "x" * pad})
        if frame_size(update) == size:
            return update
    raise AssertionError(f"no update frames to exactly {size} bytes")


#: The size of make_update("BTC-USD", seq)'s frame for a one-digit seq.
FRAME = frame_size(make_update("BTC-USD", 1))


def rejected(h: Harness, reason: str) -> float | None:
    return h.value(REJECTED, reason=reason)


# -- the fake framing itself -------------------------------------------------------------------


def test_decode_frames_reads_7_16_and_64_bit_lengths() -> None:
    bodies = [{"n": 1}, {"s": "x" * 200}, {"s": "y" * 70_000}]
    data = b"".join(protocol.text_frame(orjson.dumps(body)) for body in bodies)
    assert data[0] == 0x81 and data[1] < 126
    assert decode_frames(data) == bodies
    with pytest.raises(AssertionError, match="truncated"):
        decode_frames(data[:-1])
    with pytest.raises(AssertionError, match="masked"):
        decode_frames(b"\x81\x81abcdx")


# -- fan-out -----------------------------------------------------------------------------------


async def test_broadcast_reaches_every_subscriber_once_with_the_spec_shape() -> None:
    h = make_channel()
    subscribers = [h.open(f"10.0.0.{i}") for i in range(3)]
    other, idle = h.open("10.0.1.1"), h.open("10.0.1.2")
    for client in subscribers:
        subscribe(h.channel, client.conn, ["BTC-USD"])
    subscribe(h.channel, other.conn, ["ETH-USD"])

    queued = h.channel.broadcast(make_update("BTC-USD", 42, {"price": 1.5, "size": [1, 2]}))
    assert queued == 3
    await next_turn()

    expected = {
        "type": "update",
        "channel": "ticker",
        "topic": "BTC-USD",
        "seq": 42,
        "ts": EPOCH,
        "data": {"price": 1.5, "size": [1, 2]},
    }
    for client in subscribers:
        assert client.messages() == [expected]
        assert len(client.transport.writes) == 1
    # The frame is built once: every subscriber gets the very same bytes.
    assert len({client.transport.data for client in subscribers}) == 1
    assert other.transport.writes == []
    assert idle.transport.writes == []
    assert h.value(SENT) == 3


async def test_wildcard_subscriber_gets_every_topic_in_order() -> None:
    h = make_channel()
    everything, btc = h.open(), h.open()
    subscribe(h.channel, everything.conn, ["*"])
    subscribe(h.channel, btc.conn, ["BTC-USD"])

    assert h.channel.broadcast(make_update("BTC-USD", 1)) == 2
    assert h.channel.broadcast(make_update("ETH-USD", 1)) == 1
    assert h.channel.broadcast(make_update("BTC-USD", 2)) == 2
    await next_turn()

    assert updates(everything) == [("BTC-USD", 1), ("ETH-USD", 1), ("BTC-USD", 2)]
    assert updates(btc) == [("BTC-USD", 1), ("BTC-USD", 2)]


@pytest.mark.parametrize(
    "topic_lists",
    [
        [["BTC-USD", "*"]],
        [["*", "BTC-USD"]],
        [["BTC-USD"], ["*"]],
        [["*"], ["BTC-USD"]],
    ],
)
async def test_wildcard_plus_topic_gets_each_update_once(topic_lists: list[list[str]]) -> None:
    h = make_channel()
    client = h.open()
    for topics in topic_lists:
        subscribe(h.channel, client.conn, topics)

    assert h.channel.broadcast(make_update("BTC-USD", 1)) == 1
    assert h.channel.broadcast(make_update("ETH-USD", 1)) == 1
    await next_turn()

    assert updates(client) == [("BTC-USD", 1), ("ETH-USD", 1)]
    assert h.channel.state().subscriptions == 2
    assert h.channel.footprint()["topics"] == 0  # held as a wildcard, not per topic


async def test_unsubscribing_wildcard_restores_topic_subscriptions() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD", "SOL-USD"])
    subscribe(h.channel, client.conn, ["*"])

    assert h.channel.unsubscribe(client.conn, ["*"]) == ("*",)
    assert client.conn.topics == {"BTC-USD", "SOL-USD"}
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("ETH-USD", 1))
    h.channel.broadcast(make_update("SOL-USD", 1))
    await next_turn()

    assert updates(client) == [("BTC-USD", 1), ("SOL-USD", 1)]
    assert h.channel.footprint()["wildcard"] == 0
    assert h.channel.state().topics == 2


@pytest.mark.parametrize("order", [["*", "BTC-USD"], ["BTC-USD", "*"]])
async def test_unsubscribing_wildcard_and_topic_together_leaves_nothing(order: list[str]) -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD", "*"])

    h.channel.unsubscribe(client.conn, order)
    assert client.conn.topics == {"ETH-USD"}
    assert h.channel.broadcast(make_update("BTC-USD", 1)) == 0
    assert h.channel.broadcast(make_update("ETH-USD", 1)) == 1
    await next_turn()

    assert updates(client) == [("ETH-USD", 1)]
    assert h.channel.state() == ChannelState("ticker", 1, 1, 1, 0)


async def test_unsubscribing_a_topic_under_wildcard_keeps_every_topic() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD", "*"])
    h.channel.unsubscribe(client.conn, ["BTC-USD"])

    assert h.channel.broadcast(make_update("BTC-USD", 1)) == 1
    h.channel.unsubscribe(client.conn, ["*"])
    assert h.channel.broadcast(make_update("BTC-USD", 2)) == 0
    await next_turn()

    assert updates(client) == [("BTC-USD", 1)]
    assert h.channel.footprint() == {**IDLE_FOOTPRINT, "connections": 1, "addresses": 1}


async def test_large_updates_are_framed_with_extended_lengths() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    medium, large = "m" * 300, "L" * 70_000

    h.channel.broadcast(make_update("BTC-USD", 1, {"blob": medium}))
    h.channel.broadcast(make_update("BTC-USD", 2, {"blob": large}))
    await next_turn()

    payloads = decode_frame_payloads(client.transport.data)
    assert [len(p) for p in payloads] == [
        frame_size(make_update("BTC-USD", 1, {"blob": medium})) - 4,
        frame_size(make_update("BTC-USD", 2, {"blob": large})) - 10,
    ]
    assert [m["data"]["blob"] for m in client.messages()] == [medium, large]


# -- coalescing and ordering -------------------------------------------------------------------


async def test_a_burst_in_one_turn_is_one_write_per_connection_in_seq_order() -> None:
    h = make_channel()
    clients = [h.open(f"10.0.0.{i}") for i in range(3)]
    for client in clients:
        subscribe(h.channel, client.conn, ["BTC-USD"])

    for seq in range(1, 6):
        h.channel.broadcast(make_update("BTC-USD", seq))
    assert all(client.transport.writes == [] for client in clients)  # nothing before the flush
    assert h.value(SENT) == 0
    await next_turn()

    for client in clients:
        assert len(client.transport.writes) == 1
        assert seqs(client) == [1, 2, 3, 4, 5]
    assert h.value(SENT) == 15

    h.channel.broadcast(make_update("BTC-USD", 6))
    await next_turn()
    for client in clients:
        assert len(client.transport.writes) == 2
        assert seqs(client) == [1, 2, 3, 4, 5, 6]
    assert h.value(SENT) == 18


async def test_a_write_delay_holds_the_flush_and_batches_later_turns() -> None:
    h = make_channel(write_delay=0.02)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    loop = asyncio.get_running_loop()
    h.channel.broadcast(make_update("BTC-USD", 1))
    scheduled = h.channel._flush_handle
    assert isinstance(scheduled, asyncio.TimerHandle)
    assert scheduled.when() - loop.time() == pytest.approx(0.02, abs=0.01)
    await next_turn()
    h.channel.broadcast(make_update("BTC-USD", 2))  # a later turn joins the pending flush
    assert client.transport.writes == []
    assert h.channel._flush_handle is scheduled
    done = loop.create_future()
    loop.call_at(scheduled.when(), done.set_result, None)  # runs right after the flush
    await done
    assert len(client.transport.writes) == 1
    assert seqs(client) == [1, 2]


async def test_a_lagging_client_keeps_shared_frames_until_its_transport_drains() -> None:
    h = make_channel()
    lagging, fast = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (lagging, fast):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    lagging.transport.buffer_size = HOLD_BYTES + 1  # the kernel stopped taking its bytes
    await next_turn()
    assert len(lagging.transport.writes) == 1

    frames = [make_update("BTC-USD", seq) for seq in (2, 3)]
    for update in frames:
        h.channel.broadcast(update)
    await next_turn()
    # The fast client got both; the lagging one got no new write, and its outbox holds the
    # very frame objects the fast client was sent (references, not a copy of its own).
    assert seqs(fast) == [1, 2, 3]
    assert len(lagging.transport.writes) == 1
    assert h.channel.footprint()["held"] == 1
    held = lagging.conn.outbox
    assert len(held) == 2 and all(frame in fast.transport.data for frame in held)
    assert h.channel.state().outbox_bytes == HOLD_BYTES + 1 + sum(map(len, held))

    lagging.transport.buffer_size = 0  # it drained: the retry writes everything at once
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_later(HOLD_RETRY_SECONDS * 2, done.set_result, None)
    await done
    assert len(lagging.transport.writes) == 2
    assert seqs(lagging) == [1, 2, 3]
    assert h.channel.footprint()["held"] == 0
    assert h.value(SENT) == 6


async def test_replies_keep_their_order_relative_to_updates() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])

    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.send(client.conn, protocol.subscribed(("ETH-USD",), 7), "reply")
    h.channel.broadcast(make_update("BTC-USD", 2))
    h.channel.send(client.conn, protocol.pong("p", 123.5), "reply")
    await next_turn()

    assert len(client.transport.writes) == 1
    assert [(m["type"], m.get("seq"), m.get("id")) for m in client.messages()] == [
        ("update", 1, None),
        ("subscribed", None, 7),
        ("update", 2, None),
        ("pong", None, "p"),
    ]
    assert h.value(SENT) == 2  # updates only: the replies are frames of their own kind
    assert h.value(FRAMES, kind="reply") == 2


async def test_send_to_a_removed_connection_is_dropped() -> None:
    h = make_channel()
    client = h.open()
    h.channel.remove(client.conn, "client_closed")

    h.channel.send(client.conn, protocol.pong(None, 1.0), "reply")
    await next_turn()

    assert client.transport.writes == []
    assert h.value(SENT) == 0
    assert h.value(FAILED, reason="connection_lost") == 0
    assert h.channel.footprint() == IDLE_FOOTPRINT


# -- slow consumers ----------------------------------------------------------------------------


async def after_retry() -> None:
    """Let the hold/lag retry timer (HOLD_RETRY_SECONDS of loop time) run once more."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_later(HOLD_RETRY_SECONDS * 2, done.set_result, None)
    await done


async def test_a_slow_consumer_lags_then_is_closed_1013_after_its_grace() -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    fast = h.open("10.0.0.1")
    slow = h.open("10.0.0.2", transport=FakeTransport(buffer_size=1000, stopped=True))
    for client in (fast, slow):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.clock.advance(5.0)

    assert h.channel.broadcast(make_update("BTC-USD", 1)) == 2
    await next_turn()  # 1000 buffered + the frame: over 1024, so it lags from now
    assert h.channel.lagging
    assert h.channel.broadcast(make_update("BTC-USD", 2)) == 2  # lagging is not cut
    await next_turn()
    h.clock.advance(1.9)
    await after_retry()
    assert slow.closer.calls == []  # still within its grace
    assert h.channel.footprint()["lagging"] == 1

    h.clock.advance(0.1)  # 2 s over the limit without taking a byte
    await after_retry()
    assert slow.closer.calls == [(1013, "slow consumer")]
    assert not h.channel.lagging
    for seq in range(3, 6):
        assert h.channel.broadcast(make_update("BTC-USD", seq)) == 1
    await next_turn()

    assert seqs(fast) == [1, 2, 3, 4, 5]
    assert seqs(slow) == [1, 2]  # handed to its transport, never read
    assert slow.conn.closing
    assert slow.conn not in h.channel.connections
    assert slow.closer.calls == [(1013, "slow consumer")]
    assert h.value(SLOW) == 1
    assert h.value(FAILED, reason="slow_consumer") == 0  # its outbox was empty when cut
    assert h.value(ERRORS, type="slow_consumer") == 1
    assert h.value(LAST_ERROR, type="slow_consumer") == EPOCH + 7.0
    assert h.value(DISCONNECTS, reason="slow_consumer") == 1
    assert h.value(SENT) == 7
    assert h.channel.state() == ChannelState("ticker", 1, 1, 1, 0)
    assert h.channel.footprint()["lagging"] == 0


async def test_a_client_that_takes_a_burst_stops_lagging_and_is_never_cut() -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=0.5)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    for seq in range(1, 9):  # 8 x 256 bytes in one turn: twice the limit
        assert h.channel.broadcast(update_of_size(256, seq=seq)) == 1
    assert h.channel.lagging
    await next_turn()  # its kernel takes everything
    await after_retry()
    assert not h.channel.lagging
    assert client.conn.lagging_since is None

    h.clock.advance(60.0)
    await after_retry()
    assert client.closer.calls == []
    assert seqs(client) == list(range(1, 9))
    assert h.value(SLOW) == 0
    assert h.channel.footprint() == {
        **IDLE_FOOTPRINT,
        "connections": 1,
        "addresses": 1,
        "topics": 1,
    }


async def test_a_burst_past_the_hard_cap_drops_the_client_and_its_queue_at_once() -> None:
    h = make_channel(max_outbox_bytes=1024)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])

    for seq in range(1, 5):  # 4 x 256 bytes: exactly at the limit, still fine
        assert h.channel.broadcast(update_of_size(256, seq=seq)) == 1
    assert not h.channel.lagging
    for seq in range(5, 9):  # over the limit it lags, up to the hard cap of 2 x 1024
        assert h.channel.broadcast(update_of_size(256, seq=seq)) == 1
    assert h.channel.lagging
    assert client.closer.calls == []
    assert h.channel.state().outbox_bytes == 2048
    assert h.channel.broadcast(update_of_size(256, seq=9)) == 0  # past the hard cap
    await next_turn()

    assert client.closer.calls == [(1013, "slow consumer")]
    assert client.transport.writes == []
    assert h.value(FAILED, reason="slow_consumer") == 9  # 8 queued + the one that did not fit
    assert h.value(SLOW) == 1
    assert h.value(SENT) == 0
    assert h.channel.footprint() == IDLE_FOOTPRINT


@pytest.mark.parametrize(("extra", "cut"), [(0, False), (1, True)])
async def test_slow_consumer_limit_counts_transport_buffer_plus_outbox(
    extra: int, cut: bool
) -> None:
    limit, size = 1024, 200
    h = make_channel(max_outbox_bytes=limit)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(update_of_size(size, seq=1))
    await next_turn()
    # It stops reading: what the kernel did not take stays in the transport's buffer.
    client.transport.buffer_size = limit - 2 * size + extra
    client.transport.stopped = True

    h.channel.broadcast(update_of_size(size, seq=2))
    h.channel.broadcast(update_of_size(size, seq=3))
    await next_turn()
    assert h.channel.lagging is cut
    h.clock.advance(h.channel.limits.slow_consumer_grace)
    await after_retry()

    assert seqs(client) == [1, 2, 3]
    if cut:
        assert client.closer.calls == [(1013, "slow consumer")]
        assert h.value(FAILED, reason="slow_consumer") == 0
        assert h.value(SLOW) == 1
    else:
        assert client.closer.calls == []
        assert h.value(FAILED, reason="slow_consumer") == 0
        assert h.value(SLOW) == 0


async def test_a_stale_backlog_does_not_make_a_false_slow_consumer() -> None:
    h = make_channel(max_outbox_bytes=1024)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    client.transport.buffer_size = 1000
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()
    assert client.conn.backlog == 1000

    client.transport.buffer_size = 0  # the client caught up since the last flush
    assert h.channel.broadcast(make_update("BTC-USD", 2)) == 1
    await next_turn()

    assert client.closer.calls == []
    assert seqs(client) == [1, 2]
    assert h.value(SLOW) == 0
    assert h.value(FAILED, reason="slow_consumer") == 0
    assert client.conn in h.channel.connections


async def test_a_reply_that_overflows_the_outbox_lags_and_is_cut_too() -> None:
    h = make_channel(max_outbox_bytes=1024)
    client = h.open(transport=FakeTransport(buffer_size=1024, stopped=True))
    h.channel.send(client.conn, protocol.pong(1, 1.0), "reply")
    await next_turn()  # written; the flush sees the transport buffer past the limit
    assert h.channel.lagging

    h.channel.send(client.conn, protocol.pong(2, 2.0), "reply")
    await next_turn()
    h.clock.advance(h.channel.limits.slow_consumer_grace)
    await after_retry()

    assert client.closer.calls == [(1013, "slow consumer")]
    assert [m["id"] for m in client.messages()] == [1, 2]  # in its buffer, never read
    assert h.value(SLOW) == 1
    assert h.value(FAILED, reason="slow_consumer") == 0


# -- pacing: the relay's side of a burst --------------------------------------------------------


async def test_pace_writes_what_is_queued_at_once_even_with_a_write_delay() -> None:
    h = make_channel(write_delay=0.05)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    assert h.channel.turn_bytes > 0
    scheduled = h.channel._flush_handle
    assert scheduled is not None

    await h.channel.pace()  # nobody lags: one turn, no waiting

    assert seqs(client) == [1]
    assert len(client.transport.writes) == 1
    assert h.channel.turn_bytes == 0
    assert scheduled.cancelled()  # the delayed flush has nothing left to do


async def test_pace_waits_while_a_client_lags_and_returns_once_it_catches_up() -> None:
    h = make_channel(max_outbox_bytes=1024)
    lagging = h.open(transport=FakeTransport(buffer_size=2000, stopped=True))
    subscribe(h.channel, lagging.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    pacing = asyncio.create_task(h.channel.pace())
    await after_retry()
    await after_retry()
    assert not pacing.done()  # the relay holds back while a client lags

    lagging.transport.buffer_size = 0  # its kernel took everything
    await asyncio.wait_for(pacing, 5)
    assert not h.channel.lagging
    assert lagging.closer.calls == []
    assert seqs(lagging) == [1]


async def test_a_reader_that_trickles_just_under_the_limit_still_lags_and_is_cut() -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    client = h.open(transport=FakeTransport(buffer_size=2000, stopped=True))
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    pacing = asyncio.create_task(h.channel.pace())
    await after_retry()
    client.transport.buffer_size = 1000  # it read a little: under the limit, not half-way
    h.clock.advance(1.0)
    await after_retry()
    assert not pacing.done()
    assert client.closer.calls == []

    h.clock.advance(1.0)
    await asyncio.wait_for(pacing, 5)
    assert client.closer.calls == [(1013, "slow consumer")]


async def test_pace_waits_for_a_stopped_reader_one_check_only_and_it_is_still_cut() -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=3.0)
    fast = h.open("10.0.0.1")
    stopped = h.open("10.0.0.2", transport=FakeTransport(buffer_size=2000, stopped=True))
    for client in (stopped, fast):
        subscribe(h.channel, client.conn, ["*"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    pacing = asyncio.create_task(h.channel.pace())
    await after_retry()
    await after_retry()
    assert not pacing.done()  # new to lagging: it has one check to show its rate

    h.clock.advance(HOLD_RETRY_SECONDS)  # it took nothing in that check
    await asyncio.wait_for(pacing, 5)
    assert h.channel.lagging and not h.channel.waiting
    assert stopped.closer.calls == []  # not waited for, but not cut before its grace

    h.channel.broadcast(make_update("BTC-USD", 2))  # the feed goes on
    await h.channel.pace()
    assert seqs(fast) == [1, 2]
    h.clock.advance(3.0)
    await after_retry()
    assert stopped.closer.calls == [(1013, "slow consumer")]
    assert fast.closer.calls == []
    assert h.channel.footprint()["lagging"] == 0


def drain(client: Client, taken: int) -> None:
    """Its kernel takes ``taken`` more bytes of what the transport holds."""
    client.transport.buffer_size -= taken


async def test_pace_waits_for_a_reader_that_drains_fast_enough_until_it_catches_up() -> None:
    # Lagging with 2048 pending, it owes 2048 - 512 = 1536 bytes within a grace of 2 s:
    # 768 B/s, 3.84 bytes per 5 ms check. Taking 4 per check is on course.
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    client = h.open(transport=FakeTransport(buffer_size=2048 - FRAME, stopped=True))
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    pacing = asyncio.create_task(h.channel.pace())
    for _ in range(5):
        h.clock.advance(HOLD_RETRY_SECONDS)
        drain(client, 4)
        await after_retry()
        assert not pacing.done()
        assert h.channel.waiting
    client.transport.buffer_size = 512  # it caught up
    h.clock.advance(HOLD_RETRY_SECONDS)
    await asyncio.wait_for(pacing, 5)
    assert not h.channel.lagging
    assert client.closer.calls == []
    assert seqs(client) == [1]


async def test_pace_does_not_wait_for_a_reader_that_trickles() -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    client = h.open(transport=FakeTransport(buffer_size=2048 - FRAME, stopped=True))
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    pacing = asyncio.create_task(h.channel.pace())
    await after_retry()
    h.clock.advance(HOLD_RETRY_SECONDS)
    drain(client, 3)  # 600 B/s where 768 B/s are owed
    await asyncio.wait_for(pacing, 5)
    assert h.channel.lagging and not h.channel.waiting
    assert client.closer.calls == []


async def test_a_reader_that_slows_down_is_no_longer_waited_for_then_again_if_it_speeds_up() -> (
    None
):
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    client = h.open(transport=FakeTransport(buffer_size=2048 - FRAME, stopped=True))
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()
    assert h.channel.waiting
    h.clock.advance(0.5)
    drain(client, 1000)  # fast at first: 1000 bytes in 0.5 s
    await after_retry()
    assert h.channel.waiting
    h.clock.advance(0.5)
    drain(client, 10)  # then 10 bytes in 0.5 s: it would not make it in time
    await after_retry()
    assert h.channel.lagging and not h.channel.waiting
    h.clock.advance(0.5)
    drain(client, 500)  # fast again, and on course for the 0.5 s left: waited for again
    await after_retry()
    assert h.channel.waiting
    assert client.closer.calls == []


async def test_frames_added_while_a_reader_is_not_waited_for_do_not_hide_its_rate() -> None:
    # The rate is what its kernel took, not the change in its pending bytes: the feed that
    # went on meanwhile must not make a reader that drains well look too slow.
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    rule = SlowConsumerRule(1024, 2.0)
    client = h.open(transport=FakeTransport(buffer_size=1500 - FRAME, stopped=True))
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()
    h.clock.advance(0.5)
    await after_retry()
    assert not h.channel.waiting  # it took nothing
    before = client.conn.pending_bytes()
    for seq in range(2, 5):  # the feed goes on: 3 more frames
        h.channel.broadcast(make_update("BTC-USD", seq))
    await next_turn()
    taken = (988 + 6 * FRAME) // 3 + 1  # on course by what it took, not by its net drain
    drain(client, taken)
    after = client.conn.pending_bytes()
    assert not rule.on_course(after, before - after, 0.5, 1.0)
    assert rule.on_course(after, taken, 0.5, 1.0)
    h.clock.advance(0.5)
    await after_retry()
    assert h.channel.waiting


@pytest.mark.parametrize("position", [0, 1, 2])
async def test_only_the_reader_on_course_holds_pace_wherever_the_stopped_ones_are(
    position: int,
) -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=2.0)
    clients = [
        h.open(f"10.0.0.{n}", transport=FakeTransport(buffer_size=2048 - FRAME, stopped=True))
        for n in range(3)
    ]
    draining = clients[position]
    for client in clients:
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    pacing = asyncio.create_task(h.channel.pace())
    for _ in range(3):
        h.clock.advance(HOLD_RETRY_SECONDS)
        drain(draining, 100)
        await after_retry()
        assert not pacing.done()
    draining.transport.buffer_size = 0
    h.clock.advance(HOLD_RETRY_SECONDS)
    await asyncio.wait_for(pacing, 5)
    assert h.channel.footprint()["lagging"] == 2  # the stopped ones still lag, unwaited
    assert not h.channel.waiting
    assert all(client.closer.calls == [] for client in clients)


async def test_a_reader_not_waited_for_is_cut_at_the_hard_cap_before_its_grace() -> None:
    h = make_channel(max_outbox_bytes=1024, slow_consumer_grace=60.0)
    fast = h.open("10.0.0.1")
    stopped = h.open("10.0.0.2", transport=FakeTransport(buffer_size=1100, stopped=True))
    for client in (fast, stopped):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()
    h.clock.advance(HOLD_RETRY_SECONDS)
    await after_retry()
    assert h.channel.lagging and not h.channel.waiting
    seq = 1
    while not stopped.closer.calls:
        seq += 1
        assert seq < 100
        h.channel.broadcast(update_of_size(100, seq=seq))
        await h.channel.pace()  # never waits: the feed goes on
    assert stopped.closer.calls == [(1013, "slow consumer")]
    assert stopped.transport.buffer_size <= 2 * 1024
    assert seqs(fast) == list(range(1, seq + 1))
    assert fast.closer.calls == []


# -- failing transports ------------------------------------------------------------------------


async def test_a_write_that_raises_counts_failed_frames_and_closes_1011() -> None:
    h = make_channel()
    broken, healthy = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (broken, healthy):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    broken.transport.write_error = ConnectionResetError("peer reset")
    h.clock.advance(12.5)

    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("BTC-USD", 2))
    await next_turn()

    assert broken.closer.calls == [(1011, "send failed")]
    assert broken.conn not in h.channel.connections
    assert seqs(healthy) == [1, 2]
    assert h.value(FAILED, reason="connection_lost") == 2
    assert h.value(SENT) == 2
    assert h.value(ERRORS, type="send_failed") == 1
    assert h.value(LAST_ERROR, type="send_failed") == EPOCH + 12.5
    assert h.value(DISCONNECTS, reason="internal_error") == 1

    assert h.channel.broadcast(make_update("BTC-USD", 3)) == 1  # no longer a subscriber
    await next_turn()
    h.channel.remove(broken.conn, "connection_lost")  # the handler's remove: a no-op now
    assert h.value(DISCONNECTS, reason="connection_lost") == 0
    assert h.value(FAILED, reason="connection_lost") == 2
    assert seqs(healthy) == [1, 2, 3]
    assert h.channel.state() == ChannelState("ticker", 1, 1, 1, 0)


async def test_a_closing_transport_gets_nothing_and_its_frames_count_as_failed() -> None:
    h = make_channel()
    gone, healthy = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (gone, healthy):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    gone.transport.closing = True

    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("BTC-USD", 2))
    await next_turn()

    assert gone.transport.writes == []
    assert seqs(healthy) == [1, 2]
    assert h.value(FAILED, reason="connection_lost") == 2
    assert h.value(SENT) == 2
    # The peer is already going away: the WebSocket handler's receive loop sees it, counts
    # the failure and calls remove(); the flush only accounts for the undeliverable frames.
    h.channel.remove(gone.conn, "connection_lost")
    assert gone.conn not in h.channel.connections
    assert h.value(DISCONNECTS, reason="connection_lost") == 1
    assert h.value(FAILED, reason="connection_lost") == 2  # not counted twice
    assert h.channel.state() == ChannelState("ticker", 1, 1, 1, 0)


async def test_remove_counts_what_was_still_queued() -> None:
    h = make_channel()
    leaving, staying = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (leaving, staying):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("BTC-USD", 2))

    h.channel.remove(leaving.conn, "client_closed")
    h.channel.remove(leaving.conn, "client_closed")  # idempotent
    await next_turn()

    assert leaving.transport.writes == []
    assert leaving.closer.calls == []  # remove forgets; closing is the caller's business
    assert seqs(staying) == [1, 2]
    assert h.value(FAILED, reason="connection_lost") == 2
    assert h.value(DISCONNECTS, reason="client_closed") == 1
    assert h.value(SENT) == 2


# -- admission ---------------------------------------------------------------------------------


def test_max_connections_counts_open_and_reserved_connections() -> None:
    h = make_channel(max_connections=3)
    first, _ = h.open("10.0.0.1"), h.open("10.0.0.2")
    h.channel.admit("10.0.0.3")  # upgrade in progress: holds a place

    with pytest.raises(ChannelFull) as caught:
        h.channel.admit("10.0.0.4")
    assert caught.value.status == 503
    assert caught.value.message == "channel 'ticker' is at max_connections (3)"
    assert rejected(h, "capacity") == 1

    h.channel.release("10.0.0.3")
    h.channel.admit("10.0.0.4")
    with pytest.raises(ChannelFull):
        h.channel.admit("10.0.0.5")
    h.channel.remove(first.conn, "client_closed")
    h.channel.admit("10.0.0.5")

    assert rejected(h, "capacity") == 2
    assert h.channel.footprint()["admitting"] == 2
    assert h.value(CONNECTIONS) == 2


def test_max_connections_per_ip() -> None:
    h = make_channel(max_connections_per_ip=2)
    first, _ = h.open("10.0.0.1"), h.open("10.0.0.1")

    with pytest.raises(TooManyConnectionsFromAddress) as caught:
        h.channel.admit("10.0.0.1")
    assert caught.value.status == 429
    assert caught.value.message == "at most 2 connections per address"
    h.open("10.0.0.2")  # another address is not affected
    assert rejected(h, "ip_limit") == 1

    h.channel.remove(first.conn, "client_closed")
    h.open("10.0.0.1")
    with pytest.raises(TooManyConnectionsFromAddress):
        h.channel.admit("10.0.0.1")
    assert rejected(h, "ip_limit") == 2
    assert rejected(h, "capacity") == 0
    assert h.channel.footprint()["addresses"] == 2


def test_connections_per_minute_is_a_sliding_window_per_address_with_retry_after() -> None:
    h = make_channel(connections_per_minute=2)
    t0 = h.clock.now
    h.channel.admit("10.0.0.1")
    h.clock.set(t0 + 10)
    h.channel.admit("10.0.0.1")

    h.clock.set(t0 + 30)
    with pytest.raises(ConnectionRateLimited) as caught:
        h.channel.admit("10.0.0.1")
    assert caught.value.retry_after == 30  # the first admission leaves the window at t0 + 60
    assert caught.value.status == 429
    assert caught.value.message == "at most 2 connections per minute per address"
    h.channel.admit("10.0.0.2")  # another address has a window of its own

    h.clock.set(t0 + 59.5)
    with pytest.raises(ConnectionRateLimited) as caught:
        h.channel.admit("10.0.0.1")
    assert caught.value.retry_after == 1  # whole seconds, rounded up

    h.clock.set(t0 + 60)
    h.channel.admit("10.0.0.1")  # the t0 admission has expired
    with pytest.raises(ConnectionRateLimited) as caught:
        h.channel.admit("10.0.0.1")
    assert caught.value.retry_after == 10

    assert rejected(h, "rate_limited") == 3
    assert h.value(RATE_LIMIT_HITS, limit="connections_per_minute") == 3
    assert h.channel.admission_window() == 3  # 10.0.0.1 at t0+10 and t0+60, 10.0.0.2
    assert h.channel.footprint()["admitting"] == 4  # refusals hold no reservation
    assert h.channel.footprint()["addresses"] == 2


def test_handshake_budget_refuses_every_address_with_a_jittered_retry_after() -> None:
    h = make_channel(handshakes_per_second=2, handshake_burst=3)
    for i in range(3):
        h.channel.admit(f"10.0.0.{i}")
    with pytest.raises(HandshakeRateLimited) as caught:
        h.channel.admit("10.0.0.9")
    assert caught.value.status == 429
    assert 1 <= (caught.value.retry_after or 0) <= MAX_HANDSHAKE_RETRY
    h.clock.advance(0.5)  # one token back
    h.channel.admit("10.0.0.9")

    assert rejected(h, "handshake_rate") == 1
    assert rejected(h, "rate_limited") == 0
    assert h.value(RATE_LIMIT_HITS, limit="handshakes_per_second") == 1


def test_draining_refuses_every_new_connection() -> None:
    h = make_channel()
    h.channel.draining = True
    with pytest.raises(Draining) as caught:
        h.channel.admit("10.0.0.1")
    assert caught.value.status == 503
    assert caught.value.message == "the gateway is draining; reconnect to another node"
    with pytest.raises(Draining):
        h.channel.admit("10.0.0.2")

    assert rejected(h, "draining") == 2
    assert h.channel.footprint() == IDLE_FOOTPRINT
    assert h.channel.admission_window() == 0
    h.channel.draining = False
    h.open("10.0.0.1")


def test_refusals_for_capacity_take_no_place_in_the_rate_window() -> None:
    h = make_channel(max_connections=1, connections_per_minute=2)
    client = h.open("10.0.0.1")
    for _ in range(5):
        with pytest.raises(ChannelFull):
            h.channel.admit("10.0.0.2")
    assert h.channel.admission_window() == 1

    h.channel.remove(client.conn, "client_closed")
    h.open("10.0.0.2")  # the window still has room for the second admission
    assert rejected(h, "capacity") == 5
    assert rejected(h, "rate_limited") == 0
    assert h.value(RATE_LIMIT_HITS, limit="connections_per_minute") == 0


def test_every_rejection_is_counted_by_its_reason() -> None:
    h = make_channel(
        max_connections=2, max_connections_per_ip=1, connections_per_minute=2, handshake_burst=4
    )
    h.open("10.0.0.1")
    with pytest.raises(TooManyConnectionsFromAddress):
        h.channel.admit("10.0.0.1")
    h.open("10.0.0.2")
    with pytest.raises(ChannelFull):
        h.channel.admit("10.0.0.3")
    h.channel.remove(h.clients[0].conn, "client_closed")
    h.open("10.0.0.1")  # second admission of 10.0.0.1 this minute
    h.channel.remove(h.clients[2].conn, "client_closed")
    with pytest.raises(ConnectionRateLimited):
        h.channel.admit("10.0.0.1")
    h.open("10.0.0.3")  # the fourth handshake: the budget is spent
    h.channel.remove(h.clients[3].conn, "client_closed")
    with pytest.raises(HandshakeRateLimited):
        h.channel.admit("10.0.0.4")
    h.channel.draining = True
    with pytest.raises(Draining):
        h.channel.admit("10.0.0.4")

    by_reason = {
        reason: rejected(h, reason)
        for reason in (
            "rate_limited",
            "handshake_rate",
            "capacity",
            "ip_limit",
            "draining",
            "unauthorized",
        )
    }
    assert by_reason == {
        "rate_limited": 1,
        "handshake_rate": 1,
        "capacity": 1,
        "ip_limit": 1,
        "draining": 1,
        "unauthorized": 0,
    }


def test_release_gives_the_reservation_back() -> None:
    h = make_channel(max_connections=1, max_connections_per_ip=1)
    h.channel.admit("10.0.0.1")
    assert h.channel.footprint() == {**IDLE_FOOTPRINT, "admitting": 1, "addresses": 1}

    h.channel.release("10.0.0.1")
    assert h.channel.footprint() == IDLE_FOOTPRINT
    h.channel.admit("10.0.0.1")  # neither the channel nor the address is full now
    h.channel.release("10.0.0.1")
    h.open("10.0.0.1")

    assert rejected(h, "capacity") == 0
    assert rejected(h, "ip_limit") == 0
    assert h.value(CONNECTIONS) == 1
    assert h.channel.footprint() == {**IDLE_FOOTPRINT, "connections": 1, "addresses": 1}


# -- subscriptions -----------------------------------------------------------------------------


async def test_max_topics_holds_across_calls_and_a_refusal_changes_nothing() -> None:
    h = make_channel(max_topics=3)
    client = h.open()
    assert subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD"]) == ("BTC-USD", "ETH-USD")

    with pytest.raises(TooManyTopics) as caught:
        subscribe(h.channel, client.conn, ["SOL-USD", "ADA-USD"])
    assert caught.value.code == "too_many_topics"
    assert caught.value.message == "at most 3 topics per connection"
    assert client.conn.topics == {"BTC-USD", "ETH-USD"}
    assert h.channel.state() == ChannelState("ticker", 1, 2, 2, 0)
    assert h.channel.broadcast(make_update("SOL-USD", 1)) == 0

    # Topics already held do not count again.
    assert subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD", "SOL-USD"]) == (
        "BTC-USD",
        "ETH-USD",
        "SOL-USD",
    )
    with pytest.raises(TooManyTopics):
        subscribe(h.channel, client.conn, ["*"])  # the wildcard is a topic too
    assert client.conn.all_topics is False
    assert h.channel.state() == ChannelState("ticker", 1, 3, 3, 0)
    assert h.channel.broadcast(make_update("ADA-USD", 1)) == 0
    assert h.channel.broadcast(make_update("SOL-USD", 2)) == 1
    await next_turn()
    assert updates(client) == [("SOL-USD", 2)]


def test_a_topic_repeated_in_one_call_counts_once() -> None:
    h = make_channel(max_topics=2)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    assert subscribe(h.channel, client.conn, ["ETH-USD", "ETH-USD"]) == ("ETH-USD",)
    assert client.conn.topics == {"BTC-USD", "ETH-USD"}


async def test_private_channel_allows_only_the_users_own_topic() -> None:
    h = make_channel("user")
    alice = h.open("10.0.0.1", user="alice")
    bob = h.open("10.0.0.2", user="bob")
    anonymous = h.open("10.0.0.3")

    assert subscribe(h.channel, alice.conn, ["*"]) == ("alice",)  # "*" means "all of mine"
    assert subscribe(h.channel, alice.conn, ["alice"]) == ("alice",)
    assert subscribe(h.channel, bob.conn, ["bob"]) == ("bob",)
    for topics in (["bob"], ["alice", "bob"], ["*", "carol"]):
        with pytest.raises(ForbiddenTopic) as caught:
            subscribe(h.channel, alice.conn, topics)
        assert caught.value.code == "forbidden_topic"
        assert caught.value.message == (
            "on the user channel you may subscribe only to your own user id"
        )
    for topics in (["*"], ["alice"]):
        with pytest.raises(ForbiddenTopic):
            subscribe(h.channel, anonymous.conn, topics)
    with pytest.raises(ForbiddenTopic):
        h.channel.unsubscribe(alice.conn, ["bob"])

    assert alice.conn.topics == {"alice"}
    assert alice.conn.all_topics is False
    assert anonymous.conn.topics == set()
    assert h.channel.footprint()["wildcard"] == 0

    assert h.channel.broadcast(make_update("bob", 1, {"balance": 5}, channel="user")) == 1
    assert h.channel.broadcast(make_update("alice", 1, {"balance": 7}, channel="user")) == 1
    await next_turn()
    assert [(m["channel"], m["topic"], m["data"]) for m in alice.messages()] == [
        ("user", "alice", {"balance": 7})
    ]
    assert updates(bob) == [("bob", 1)]
    assert anonymous.transport.writes == []

    assert h.channel.unsubscribe(alice.conn, ["*"]) == ("alice",)
    assert alice.conn.topics == set()
    assert h.channel.state().topics == 1


# -- cleanup and memory ------------------------------------------------------------------------


async def test_thousands_of_connection_cycles_leave_nothing_behind() -> None:
    h = make_channel(connections_per_minute=100, max_connections_per_ip=20, max_topics=5)
    channel = h.channel
    live: deque[Client] = deque()
    cycles = 3000

    def end(client: Client, i: int) -> None:
        if i % 3 == 0:
            channel.remove(client.conn, "client_closed")
        else:
            channel.close(client.conn, 1000, "bye", "client_closed")

    for i in range(cycles):
        h.clock.advance(1.0)  # at most 60 admissions per window, under the limit
        client = h.open(f"10.{i % 3}.0.{i % 5}")
        topics = [f"SYM-{i % 701}", f"SYM-{i * 7 % 997}"]
        if i % 10 == 0:
            topics.append("*")
        subscribe(channel, client.conn, topics)
        if i % 13 == 0:
            channel.unsubscribe(client.conn, topics[:1])
        channel.broadcast(make_update(topics[0], i))
        channel.send(client.conn, protocol.subscribed(tuple(topics), i), "reply")
        if i % 29 == 0:
            client.transport.write_error = BrokenPipeError()  # fails at the next flush
        live.append(client)
        if i % 4 == 0:
            await next_turn()
        if len(live) > 25:
            oldest = live.popleft()
            end(oldest, i)
        assert channel.admission_window() <= 60
    while live:
        end(live.popleft(), 0)
    await next_turn()

    assert channel.footprint() == IDLE_FOOTPRINT
    assert channel.state() == ChannelState("ticker", 0, 0, 0, 0)
    assert channel.connections == frozenset()
    assert channel.admission_window() == 60  # only the admissions of the last 60 s
    assert h.value(CONNECTIONS) == cycles
    disconnects = sum(
        h.registry.get_sample_value(DISCONNECTS, {"channel": "ticker", "reason": reason}) or 0
        for reason in ("client_closed", "internal_error")
    )
    assert disconnects == cycles
    assert h.value(PUBLISHED) == cycles


def test_admissions_older_than_a_minute_leave_the_window_at_the_next_admit() -> None:
    h = make_channel(connections_per_minute=100)
    for i in range(50):
        h.channel.admit(f"10.0.0.{i}")
        h.channel.release(f"10.0.0.{i}")
    assert h.channel.admission_window() == 50

    h.clock.advance(60.0)
    h.channel.admit("10.0.1.1")
    assert h.channel.admission_window() == 1
    assert h.channel.footprint() == {**IDLE_FOOTPRINT, "admitting": 1, "addresses": 1}


def test_admission_window_holds_only_entries_younger_than_60_seconds() -> None:
    h = make_channel(connections_per_minute=100)
    for i in range(50):
        h.channel.admit(f"10.0.0.{i}")
        h.channel.release(f"10.0.0.{i}")
    h.clock.advance(59.9)
    assert h.channel.admission_window() == 50

    h.clock.advance(0.1)
    assert h.channel.admission_window() == 0


# -- closing -----------------------------------------------------------------------------------


async def test_close_all_flushes_outboxes_then_closes_every_connection() -> None:
    h = make_channel()
    clients = [h.open(f"10.0.0.{i}") for i in range(3)]
    for client in clients:
        subscribe(h.channel, client.conn, ["BTC-USD", "*"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("ETH-USD", 1))

    closed = h.channel.close_all(1001, "server shutting down", "shutdown")
    assert closed == 3
    for client in clients:
        assert updates(client) == [("BTC-USD", 1), ("ETH-USD", 1)]
        assert client.closer.calls == [(1001, "server shutting down")]
        assert client.conn.closing
    assert h.channel.connections == frozenset()
    assert h.channel.state() == ChannelState("ticker", 0, 0, 0, 0)

    await next_turn()  # the flush scheduled by the broadcasts has nothing left to write
    assert all(len(client.transport.writes) == 1 for client in clients)
    assert h.channel.footprint() == IDLE_FOOTPRINT
    assert h.value(SENT) == 6
    assert h.value(FAILED, reason="shutdown") == 0
    assert h.value(DISCONNECTS, reason="shutdown") == 3
    assert h.channel.close_all(1001, "again", "shutdown") == 0


async def test_close_writes_queued_frames_before_asking_to_close() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.send(client.conn, protocol.pong(3, 2.0), "reply")
    seen_at_close: list[list[Any]] = []
    client.conn.closer = lambda code, message: seen_at_close.append(client.messages())

    h.channel.close(client.conn, 1008, "token expired", "token_expired")
    h.channel.close(client.conn, 1008, "token expired", "token_expired")  # idempotent

    assert len(seen_at_close) == 1
    assert [m["type"] for m in seen_at_close[0]] == ["update", "pong"]
    assert h.value(DISCONNECTS, reason="token_expired") == 1
    assert h.value(SENT) == 1
    assert h.value(FRAMES, kind="reply") == 1


async def test_close_on_a_closing_transport_counts_the_queue_as_lost() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("BTC-USD", 2))
    client.transport.closing = True

    h.channel.close(client.conn, 1001, "bye", "shutdown")
    await next_turn()

    assert client.transport.writes == []
    assert client.closer.calls == [(1001, "bye")]
    assert h.value(FAILED, reason="connection_lost") == 2
    assert h.value(SENT) == 0
    assert h.channel.footprint() == IDLE_FOOTPRINT


async def test_close_all_survives_a_transport_whose_write_raises() -> None:
    h = make_channel()
    clients = [h.open(f"10.0.0.{i}") for i in range(3)]
    for client in clients:
        subscribe(h.channel, client.conn, ["BTC-USD"])
        client.transport.write_error = ConnectionResetError("peer reset")
    h.channel.broadcast(make_update("BTC-USD", 1))

    assert h.channel.close_all(1001, "server shutting down", "shutdown") == 3
    assert [client.closer.codes for client in clients] == [[1001], [1001], [1001]]
    assert h.channel.connections == frozenset()
    assert h.value(SENT) == 0
    assert h.value(FAILED, reason="connection_lost") == 3


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_count_each_broadcast_once_and_each_written_frame() -> None:
    h = make_channel()
    btc = [h.open(f"10.0.0.{i}") for i in range(3)]
    eth = h.open("10.0.1.1")
    for client in btc:
        subscribe(h.channel, client.conn, ["BTC-USD"])
    subscribe(h.channel, eth.conn, ["ETH-USD"])

    for seq in range(1, 5):
        assert h.channel.broadcast(make_update("BTC-USD", seq)) == 3
    assert h.channel.broadcast(make_update("ETH-USD", 1)) == 1
    assert h.channel.broadcast(make_update("XRP-USD", 1)) == 0  # published, nobody listening
    assert h.channel.broadcast(make_update("XRP-USD", 2)) == 0
    assert h.value(PUBLISHED) == 7
    assert h.value(SENT) == 0
    await next_turn()

    assert h.value(PUBLISHED) == 7
    assert h.value(SENT) == 13
    assert h.value("wsgateway_broadcast_duration_seconds_count") == 7
    assert h.value(CONNECTIONS) == 4
    for reason in ("slow_consumer", "connection_lost", "shutdown"):
        assert h.value(FAILED, reason=reason) == 0
    assert h.registry.get_sample_value(SENT, {"channel": "market"}) is None  # no other channel


async def test_state_reports_queued_and_buffered_bytes() -> None:
    h = make_channel()
    client = h.open(transport=FakeTransport(buffer_size=300))
    subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD"])
    h.channel.broadcast(update_of_size(150, "BTC-USD"))
    h.channel.broadcast(update_of_size(170, "ETH-USD"))

    assert h.channel.state() == ChannelState("ticker", 1, 2, 2, 300 + 150 + 170, 300 + 150 + 170)
    await next_turn()
    assert h.channel.state() == ChannelState("ticker", 1, 2, 2, 300, 300)


# -- direct writes to the socket ----------------------------------------------------------------


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): ``ours`` non-blocking like a transport's socket, ``peer`` the client."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    with ours, peer:
        yield ours, peer


def read_available(sock: socket.socket, expected: int) -> bytes:
    data = b""
    while len(data) < expected:
        chunk = sock.recv(expected - len(data))
        assert chunk, "the peer saw the end of the stream"
        data += chunk
    return data


async def test_with_nothing_queued_the_flush_writes_straight_to_the_socket(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    h = make_channel()
    direct = h.open("10.0.0.1", fd=ours.fileno())
    plain = h.open("10.0.0.2")
    for client in (direct, plain):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("BTC-USD", 2))
    await next_turn()

    assert direct.transport.writes == []  # the transport was not needed
    data = read_available(peer, len(plain.transport.data))
    assert data == plain.transport.data  # one write, the same bytes, the same order
    assert [m["seq"] for m in decode_frames(data)] == [1, 2]
    assert direct.conn.backlog == 0
    assert h.value(SENT) == 4


async def test_bytes_queued_in_the_transport_keep_every_write_in_the_transport(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    # An earlier write (a ping, the handshake) still waits in the transport: writing past
    # it would put our frame on the wire first.
    ours, peer = socket_pair
    h = make_channel()
    client = h.open("10.0.0.1", transport=FakeTransport(buffer_size=10), fd=ours.fileno())
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()

    assert seqs(client) == [1]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)


async def test_what_the_kernel_does_not_take_goes_through_the_transport_in_order(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h = make_channel(max_outbox_bytes=4_000_000)
    client = h.open("10.0.0.1", fd=ours.fileno())
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1, {"blob": "x" * 1_000_000}))
    await next_turn()

    rest = client.transport.data
    assert 0 < len(rest) < 1_000_000  # the socket took a part, the transport the rest
    peer.setblocking(False)
    head = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := peer.recv(1 << 20):
            head += chunk
    assert [m["seq"] for m in decode_frames(head + rest)] == [1]
    assert h.value(SENT) == 1


async def test_a_dead_peer_leaves_the_write_and_the_failure_to_the_transport(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    peer.close()  # write(2) now fails with EPIPE
    h = make_channel()
    client = h.open("10.0.0.1", fd=ours.fileno())
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()

    # The transport gets the whole frame and reports the dead peer its own way (the
    # WebSocket handler then removes the connection), exactly as without the direct path.
    assert seqs(client) == [1]
    assert client.closer.calls == []


async def test_direct_fd_only_for_plain_tcp_transports() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    try:
        assert direct_fd(transport) == transport.get_extra_info("socket").fileno() >= 0
        assert direct_fd(FakeTransport()) == -1  # type: ignore[arg-type]
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


# -- order cannot hide a skipped connection ------------------------------------------------------
#
# The fan-out walks sets of connections, in an order that depends on their addresses. A test
# with two connections catches a loop that stops at the odd one (`continue` turned `break`)
# only when the odd one happens to come first. These tests read the order the channel will
# walk and put the odd connection first, in the middle and last of five.

POSITIONS = {"first": 0, "middle": 2, "last": 4}


def fanout_order(h: Harness, topic: str) -> list[Client]:
    """The clients subscribed to ``topic`` in the order broadcast (and so the flush) visits
    them."""
    by_conn = {client.conn: client for client in h.clients}
    return [by_conn[conn] for conn in h.channel._topics[topic]]


def count_retries(h: Harness) -> list[float]:
    """Record each run of the hold retry (the loop time it ran at)."""
    runs: list[float] = []
    retry = h.channel._retry_held

    def counted() -> None:
        runs.append(asyncio.get_running_loop().time())
        retry()

    h.channel._retry_held = counted  # type: ignore[method-assign]
    return runs


ODD_KINDS = ["slow", "held", "failing", "closing", "closed_since_queued", "direct"]


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", ODD_KINDS)
async def test_the_others_get_every_frame_wherever_the_odd_connection_is(
    kind: str, position: str, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = socket_pair
    limit = 4 * HOLD_BYTES
    h = make_channel(max_outbox_bytes=limit)
    for i in range(5):
        subscribe(h.channel, h.open(f"10.0.0.{i}").conn, ["BTC-USD"])
    odd = fanout_order(h, "BTC-USD")[POSITIONS[position]]
    others = [client for client in h.clients if client is not odd]
    if kind == "direct":  # its frames go straight to a socket and skip the transport
        odd.conn.fd = ours.fileno()

    h.channel.broadcast(make_update("BTC-USD", 1))
    # What the flush of update 1 leaves in the transport (the kernel stopped taking bytes).
    if kind == "slow":
        odd.transport.buffer_size = 2 * limit  # at the hard cap: the next frame cuts it
    elif kind == "held":
        odd.transport.buffer_size = HOLD_BYTES + 1  # no new write until it drains
    await next_turn()
    if kind == "failing":
        odd.transport.write_error = ConnectionResetError("peer reset")
    elif kind == "closing":
        odd.transport.closing = True
    h.channel.broadcast(make_update("BTC-USD", 2))
    h.channel.broadcast(make_update("BTC-USD", 3))
    if kind == "closed_since_queued":  # its queue is written at once: the flush finds it empty
        h.channel.close(odd.conn, 1000, "bye", "client_closed")
    await next_turn()

    for client in others:
        assert seqs(client) == [1, 2, 3]
        assert len(client.transport.writes) == 2
    if kind == "slow":
        assert odd.closer.codes == [1013]
    elif kind == "held":
        assert (len(odd.conn.outbox), h.channel.footprint()["held"]) == (2, 1)
    elif kind == "failing":
        assert odd.closer.codes == [1011]
    elif kind == "closing":
        assert h.value(FAILED, reason="connection_lost") == 2
    elif kind == "closed_since_queued":
        assert (odd.closer.codes, seqs(odd)) == ([1000], [1, 2, 3])
    else:
        wire = read_available(peer, len(others[0].transport.data) - len(odd.transport.data))
        assert [m["seq"] for m in decode_frames(odd.transport.data + wire)] == [1, 2, 3]


@pytest.mark.parametrize("kind", ["closing", "failing", "direct"])
async def test_counts_add_up_over_several_connections_of_one_kind(kind: str) -> None:
    h = make_channel()
    pairs = [socket.socketpair() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        for i, (ours, peer) in enumerate(pairs):
            stack.enter_context(ours)
            stack.enter_context(peer)
            ours.setblocking(False)
            peer.settimeout(5)
            client = h.open(f"10.0.0.{i}", fd=ours.fileno() if kind == "direct" else -1)
            client.transport.closing = kind == "closing"
            if kind == "failing":
                client.transport.write_error = BrokenPipeError()
            subscribe(h.channel, client.conn, ["BTC-USD"])
        burst = [make_update("BTC-USD", seq) for seq in (1, 2)]
        for update in burst:
            h.channel.broadcast(update)
        await next_turn()

        if kind == "direct":
            assert (h.value(SENT), h.value(FAILED, reason="connection_lost")) == (6, 0)
            size = sum(map(frame_size, burst))
            for _, peer in pairs:
                assert [m["seq"] for m in decode_frames(read_available(peer, size))] == [1, 2]
        else:
            assert (h.value(SENT), h.value(FAILED, reason="connection_lost")) == (0, 6)


async def test_a_lag_that_outlasts_several_retries_is_delivered_when_each_client_drains() -> None:
    h = make_channel()
    for i in range(5):
        subscribe(h.channel, h.open(f"10.0.0.{i}").conn, ["BTC-USD"])
    order = fanout_order(h, "BTC-USD")
    lagging = [order[0], order[2], order[4]]  # first, middle and last of the walk
    retries = count_retries(h)
    h.channel.broadcast(make_update("BTC-USD", 1))
    for client in lagging:
        client.transport.buffer_size = HOLD_BYTES + 1
    await next_turn()
    h.channel.broadcast(make_update("BTC-USD", 2))
    h.channel.broadcast(make_update("BTC-USD", 3))
    await next_turn()
    assert h.channel.footprint()["held"] == 3

    # Each lagging client drains after a different number of retries; until then every
    # retry finds it still full and keeps its frames.
    for drained, client in enumerate(lagging, start=1):
        runs = len(retries)
        await until(lambda runs=runs: len(retries) >= runs + 2)  # two more: still held
        assert seqs(client) == [1]
        client.transport.buffer_size = 0
        await until(lambda client=client: seqs(client) == [1, 2, 3])
        assert h.channel.footprint()["held"] == 3 - drained
    for client in order:
        assert seqs(client) == [1, 2, 3]
        assert len(client.transport.writes) == 2
    assert h.value(SENT) == 15
    assert h.channel._retry_handle is None  # nothing held: no retry keeps running
    assert len(retries) >= 6


async def test_a_transport_drained_to_hold_bytes_gets_writes_and_no_retry() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    client.transport.buffer_size = HOLD_BYTES + 1
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()
    # Drained since, to the most a transport may hold and still get writes: no hold.
    client.transport.buffer_size = HOLD_BYTES
    h.channel.broadcast(make_update("BTC-USD", 2))
    await next_turn()

    assert seqs(client) == [1, 2]
    assert len(client.transport.writes) == 2
    assert h.channel.footprint()["held"] == 0
    assert h.channel._retry_handle is None


async def test_removing_a_held_connection_leaves_nothing_behind() -> None:
    h = make_channel()
    held, other = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (held, other):
        subscribe(h.channel, client.conn, ["BTC-USD", "*"])
    retries = count_retries(h)
    h.channel.broadcast(make_update("BTC-USD", 1))
    held.transport.buffer_size = HOLD_BYTES + 1
    await next_turn()
    h.channel.broadcast(make_update("BTC-USD", 2))
    h.channel.broadcast(make_update("ETH-USD", 1))
    await next_turn()
    assert h.channel.footprint()["held"] == 1

    h.channel.remove(held.conn, "shutdown")
    h.channel.remove(other.conn, "client_closed")
    assert h.channel.footprint() == IDLE_FOOTPRINT
    assert (held.conn.outbox, held.conn.outbox_bytes) == ([], 0)
    assert held.conn.closing
    assert h.value(FAILED, reason="shutdown") == 2  # what it never got, lost to the shutdown
    assert h.value(FAILED, reason="connection_lost") == 0
    assert h.value(DISCONNECTS, reason="shutdown") == 1

    held.transport.buffer_size = 0
    await until(lambda: len(retries) >= 1)  # the retry already scheduled finds nothing
    assert len(held.transport.writes) == 1
    assert h.channel._retry_handle is None
    assert h.channel.footprint() == IDLE_FOOTPRINT


async def test_subscribe_all_then_unsubscribe_all_then_a_topic_gets_only_that_topic() -> None:
    h = make_channel()
    client, bystander = h.open("10.0.0.1"), h.open("10.0.0.2")
    subscribe(h.channel, bystander.conn, ["ETH-USD"])
    assert subscribe(h.channel, client.conn, ["*"]) == ("*",)
    assert h.channel.unsubscribe(client.conn, ["*"]) == ("*",)
    assert client.conn.all_topics is False
    assert client.conn.topics == set()
    assert h.channel.footprint() == {
        **IDLE_FOOTPRINT,
        "connections": 2,
        "addresses": 2,
        "topics": 1,
    }

    assert subscribe(h.channel, client.conn, ["BTC-USD"]) == ("BTC-USD",)
    assert h.channel.broadcast(make_update("BTC-USD", 1)) == 1
    assert h.channel.broadcast(make_update("ETH-USD", 1)) == 1  # the bystander's
    assert h.channel.broadcast(make_update("SOL-USD", 1)) == 0
    await next_turn()
    assert updates(client) == [("BTC-USD", 1)]
    assert updates(bystander) == [("ETH-USD", 1)]

    # And back: "*" again, then dropping both, leaves the client with nothing.
    subscribe(h.channel, client.conn, ["*"])
    assert h.channel.broadcast(make_update("SOL-USD", 2)) == 1
    h.channel.unsubscribe(client.conn, ["*", "BTC-USD"])
    assert h.channel.broadcast(make_update("BTC-USD", 2)) == 0
    await next_turn()
    assert updates(client) == [("BTC-USD", 1), ("SOL-USD", 2)]
    assert h.channel.state() == ChannelState("ticker", 2, 1, 1, 0)


def test_rejections_are_logged_once_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = make_channel()
    caplog.set_level(logging.WARNING, logger="wsgateway.channel")
    full = ChannelFull("channel 'ticker' is at max_connections (1)")
    crowded = TooManyConnectionsFromAddress("at most 1 connections per address")

    def lines() -> list[str]:
        return [record.getMessage() for record in caplog.records]

    h.channel.reject(full)
    for _ in range(3):
        h.clock.advance(1.0)
        h.channel.reject(full)
    h.channel.reject(crowded)  # another reason has its own interval
    unknown = "rejected connection on ticker from an unknown address"
    assert lines() == [
        f"{unknown}: capacity: channel 'ticker' is at max_connections (1)",
        f"{unknown}: ip_limit: at most 1 connections per address",
    ]

    h.clock.advance(REJECTION_LOG_INTERVAL - 3.0)  # the interval since the first line is over
    h.channel.reject(full)
    h.channel.reject(crowded)  # not yet for this one
    assert lines()[2:] == [
        f"{unknown}: capacity: channel 'ticker' is at max_connections (1)"
        " (3 more since the last line)"
    ]
    assert rejected(h, "capacity") == 5  # the metric counts every one
    assert rejected(h, "ip_limit") == 2


async def test_close_frees_the_outbox_and_logs_a_failed_final_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = make_channel()
    written, broken = h.open("10.0.0.1"), h.open("10.0.0.2")
    for client in (written, broken):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    broken.transport.write_error = ConnectionResetError("peer reset")
    h.channel.broadcast(make_update("BTC-USD", 1))
    caplog.set_level(logging.DEBUG, logger="wsgateway.channel")

    h.channel.close(written.conn, 1000, "bye", "client_closed")
    h.channel.close(broken.conn, 1000, "bye", "client_closed")

    for client in (written, broken):
        assert (client.conn.outbox, client.conn.outbox_bytes) == ([], 0)
        assert client.closer.calls == [(1000, "bye")]
    assert seqs(written) == [1]
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "final write to a client of ticker failed"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ConnectionResetError)
    assert h.value(ERRORS, type="send_failed") == 1


async def test_a_failed_flush_write_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    client.transport.write_error = ConnectionResetError("peer reset")
    caplog.set_level(logging.DEBUG, logger="wsgateway.channel")
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()

    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "write to a client of ticker failed"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ConnectionResetError)


async def test_a_slow_consumer_keeps_no_queued_bytes() -> None:
    h = make_channel(max_outbox_bytes=1024)
    # 2,000 bytes the kernel will not take: one more frame passes the hard cap (2 x 1024).
    client = h.open(transport=FakeTransport(buffer_size=2000))
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    await next_turn()
    h.channel.broadcast(make_update("BTC-USD", 2))

    assert client.closer.codes == [1013]
    assert (client.conn.outbox, client.conn.outbox_bytes) == ([], 0)
    assert client.conn.pending_bytes() == 2000  # only what the transport still holds


async def test_a_frame_that_fills_the_outbox_exactly_is_queued_after_a_stale_backlog() -> None:
    limit, size = 1024, 200
    h = make_channel(max_outbox_bytes=limit)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    client.transport.buffer_size = 1000
    h.channel.broadcast(update_of_size(size, seq=1))
    await next_turn()  # the cached backlog says 1000: the next frame looks too much
    client.transport.buffer_size = limit - size  # but the real buffer leaves exactly room

    assert h.channel.broadcast(update_of_size(size, seq=2)) == 1
    assert client.conn.pending_bytes() == limit
    await next_turn()
    assert client.closer.calls == []
    assert seqs(client) == [1, 2]


def test_a_connection_gets_the_channels_message_rate() -> None:
    h = make_channel(messages_per_second=3)
    client = h.open()
    bucket = client.conn.bucket
    assert [bucket.try_take(h.clock()) for _ in range(4)] == [True, True, True, False]
    h.clock.advance(0.5)  # 1.5 tokens at 3 per second
    assert bucket.try_take(h.clock()) is True
    assert bucket.try_take(h.clock()) is False


async def test_delivery_latency_is_observed_once_per_update_at_the_flush() -> None:
    h = make_channel()
    clients = [h.open(f"10.0.0.{i}") for i in range(3)]
    for client in clients:
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.clock.advance(0.25)  # the wall clock when the flush writes
    h.channel.broadcast(make_update("BTC-USD", 1, ts=EPOCH))
    h.channel.broadcast(make_update("BTC-USD", 2, ts=EPOCH + 0.125))
    h.channel.broadcast(make_update("BTC-USD", 3, ts=EPOCH + 5.0))  # a publisher's clock ahead
    h.channel.broadcast(make_update("ETH-USD", 1, ts=EPOCH))  # nobody gets it: not observed
    await next_turn()

    assert h.value("wsgateway_delivery_latency_seconds_count") == 3
    assert h.value("wsgateway_delivery_latency_seconds_sum") == 0.25 + 0.125 + 0.0
    await next_turn()
    assert h.value("wsgateway_delivery_latency_seconds_count") == 3


async def test_broadcast_duration_is_the_time_one_broadcast_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = iter([100.0, 100.5, 200.0, 200.25])
    monkeypatch.setattr(channel_module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    h = make_channel()
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.broadcast(make_update("BTC-USD", 2))

    assert h.value("wsgateway_broadcast_duration_seconds_count") == 2
    assert h.value("wsgateway_broadcast_duration_seconds_sum") == 0.75


async def test_what_a_lagging_client_takes_straight_from_the_socket_counts_as_taken(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    h = make_channel(max_outbox_bytes=1024)
    client = h.open(fd=ours.fileno())
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(update_of_size(256, seq=1))
    await next_turn()
    assert client.conn.taken_bytes() == 0  # not counted while it does not lag
    for seq in range(2, 10):  # 8 x 256 bytes in one turn: it lags
        h.channel.broadcast(update_of_size(256, seq=seq))
    assert h.channel.lagging
    await next_turn()

    assert client.transport.writes == []  # all of it went straight to the socket
    assert client.conn.taken_bytes() == 8 * 256  # which is what outbox.py measures
    assert len(read_available(peer, 9 * 256)) == 9 * 256
    await after_retry()
    assert not h.channel.lagging


@pytest.mark.parametrize("direct", [True, False], ids=["socket", "transport"])
async def test_what_a_lagging_client_takes_adds_up_over_several_writes(
    direct: bool,
    socket_pair: tuple[socket.socket, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rate outbox.py measures is the running total of what the kernel took: a second
    write between two checks adds to it, it does not replace it."""
    # No check between the writes: on a loaded machine one could run between two loop turns
    # and find the client caught up, which ends the counting this test is about.
    monkeypatch.setattr(channel_module, "HOLD_RETRY_SECONDS", 60.0)
    ours, peer = socket_pair
    h = make_channel(max_outbox_bytes=1024)
    client = h.open(fd=ours.fileno() if direct else -1)
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(update_of_size(256, seq=1))
    await next_turn()
    for seq in range(2, 10):  # 8 x 256 bytes in one turn: it lags
        h.channel.broadcast(update_of_size(256, seq=seq))
    assert h.channel.lagging
    await next_turn()
    first = client.conn.taken_bytes()
    assert first == 8 * 256
    for seq in range(10, 12):
        h.channel.broadcast(update_of_size(256, seq=seq))
    await next_turn()
    assert client.conn.taken_bytes() == first + 2 * 256
    if direct:
        assert len(read_available(peer, 11 * 256)) == 11 * 256


# -- found by mutation testing (README, "Tests") -------------------------------------------------


def test_a_refused_admission_logs_the_client_address(caplog: pytest.LogCaptureFixture) -> None:
    h = make_channel(max_connections_per_ip=1)
    caplog.set_level(logging.WARNING, logger="wsgateway.channel")
    h.open("10.0.0.7")
    with pytest.raises(TooManyConnectionsFromAddress):
        h.channel.admit("10.0.0.7")
    assert [record.getMessage() for record in caplog.records] == [
        "rejected connection on ticker from 10.0.0.7: ip_limit: at most 1 connections per address"
    ]


async def test_unsubscribing_a_topic_named_twice_still_drops_the_topics_after_it() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD", "SOL-USD"])
    h.channel.unsubscribe(client.conn, ["BTC-USD", "BTC-USD", "ETH-USD"])
    for seq, topic in enumerate(["BTC-USD", "ETH-USD", "SOL-USD"], start=1):
        h.channel.broadcast(make_update(topic, seq))
    await next_turn()
    assert updates(client) == [("SOL-USD", 3)]
    assert h.channel.state() == ChannelState("ticker", 1, 1, 1, 0)


@pytest.mark.parametrize(("frames", "lags"), [(4, False), (5, True)])
async def test_a_client_lags_from_the_frame_that_takes_it_past_the_limit(
    frames: int, lags: bool
) -> None:
    # 4 x 256 bytes fill max_outbox_bytes exactly (kept); the fifth passes it: the client
    # lags at once, so the relay waits for it before it queues the next slice.
    h = make_channel(max_outbox_bytes=1024)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    for seq in range(1, frames + 1):
        assert h.channel.broadcast(update_of_size(256, seq=seq)) == 1
    assert h.channel.lagging is lags
    assert (client.conn.lagging_since is not None) is lags
    await next_turn()
    await after_retry()  # its kernel took everything: no longer lagging, never cut
    assert not h.channel.lagging
    assert seqs(client) == list(range(1, frames + 1))
    assert client.closer.calls == []


async def test_a_client_exactly_at_the_limit_after_a_stale_backlog_does_not_lag() -> None:
    limit, size = 1024, 200
    h = make_channel(max_outbox_bytes=limit)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    client.transport.buffer_size = 1000
    h.channel.broadcast(update_of_size(size, seq=1))
    await next_turn()  # the cached backlog says 1000
    client.transport.buffer_size = limit - size  # the kernel took some since
    h.channel.broadcast(update_of_size(size, seq=2))
    assert client.conn.pending_bytes() == limit
    assert not h.channel.lagging  # at the limit is not over it: the relay need not wait


async def test_turn_bytes_counts_the_frames_queued_since_the_last_flush() -> None:
    # What the relay reads to cut a burst into slices of max_outbox_bytes // 4.
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    assert h.channel.turn_bytes == 0
    h.channel.broadcast(update_of_size(300, seq=1))
    h.channel.broadcast(update_of_size(200, "ETH-USD", seq=1))  # nobody to queue it for
    h.channel.broadcast(update_of_size(400, seq=2))
    assert h.channel.turn_bytes == 700
    await next_turn()
    assert h.channel.turn_bytes == 0
    assert seqs(client) == [1, 2]


async def test_a_held_lagging_client_costs_one_retry_per_interval() -> None:
    # Every flush and every retry finds the client still held and lagging: they must
    # share one timer, not each start another (a timer storm on a stuck reader).
    h = make_channel(max_outbox_bytes=40_000)  # 64 KiB stuck: lagging, under the hard cap
    stuck = h.open("10.0.0.1", transport=FakeTransport(buffer_size=HOLD_BYTES + 1))
    fast = h.open("10.0.0.2")
    for client in (stuck, fast):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    retries = count_retries(h)
    for seq in range(1, 6):
        h.channel.broadcast(make_update("BTC-USD", seq))
        await next_turn()
    await until(lambda: len(retries) >= 4)
    assert h.channel.lagging
    assert h.channel.footprint()["held"] == 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(retries)]
    assert min(gaps) >= HOLD_RETRY_SECONDS / 2, gaps
    assert seqs(fast) == [1, 2, 3, 4, 5]
    assert seqs(stuck) == [1]  # what it got before its transport filled

    h.channel.remove(stuck.conn, "client_closed")
    await until(lambda: h.channel._retry_handle is None)
    assert h.channel.footprint() == {
        **IDLE_FOOTPRINT,
        "connections": 1,
        "addresses": 1,
        "topics": 1,
    }


# -- updates and other frames ----------------------------------------------------------------


async def test_frames_other_than_updates_are_counted_by_kind_not_as_updates() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.send(client.conn, protocol.error("bad_json", "no", None), "error")
    h.channel.send_frame(client.conn, protocol.pong_frame(b"hi"), "pong")
    h.channel.send_update(client.conn, protocol.text_frame(b'{"type":"update"}'))
    h.channel.reset_topic("BTC-USD", Position("e2", 0))
    await next_turn()

    assert len(client.transport.writes) == 1  # one write for the whole mixed outbox
    assert h.value(SENT) == 2  # the broadcast and the replayed update
    assert [h.value(FRAMES, kind=k) for k in ("reply", "error", "pong", "reset")] == [0, 1, 1, 1]
    assert client.conn.others is None
    assert client.conn.frames_out == 5  # the access log counts every frame written

    h.channel.broadcast(make_update("BTC-USD", 1))  # an outbox of updates only, again
    await next_turn()
    assert h.value(SENT) == 3
    assert h.value(FRAMES, kind="error") == 1


@pytest.mark.parametrize("how", ["slow_consumer", "connection_lost", "shutdown"])
async def test_lost_frames_count_only_the_updates_among_them(how: str) -> None:
    h = make_channel(max_outbox_bytes=1024)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(update_of_size(256, seq=1))
    h.channel.send(client.conn, protocol.pong(1, 1.0), "reply")
    h.channel.broadcast(update_of_size(256, seq=2))
    h.channel.send(client.conn, protocol.error("bad_json", "no", None), "error")
    if how == "slow_consumer":
        for seq in range(3, 9):  # past the hard cap: dropped with its queue
            h.channel.broadcast(update_of_size(256, seq=seq))
        expected = 7 + 1  # 7 updates queued and the one that did not fit; no reply counted
    else:
        h.channel.remove(client.conn, how)
        expected = 2
    await next_turn()

    assert h.value(FAILED, reason=how) == expected
    assert h.value(SENT) == 0
    assert sum(h.value(FRAMES, kind=k) for k in ("reply", "error", "pong", "reset")) == 0
    assert client.conn.others is None


async def test_a_write_that_fails_counts_its_updates_lost_and_no_reply_sent() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    client.transport.write_error = ConnectionResetError("peer reset")
    h.channel.broadcast(make_update("BTC-USD", 1))
    h.channel.send(client.conn, protocol.pong(1, 1.0), "reply")
    await next_turn()

    assert h.value(FAILED, reason="connection_lost") == 1
    assert h.value(FRAMES, kind="reply") == 0


async def test_state_reports_the_largest_outbox() -> None:
    h = make_channel()
    small = h.open(transport=FakeTransport(buffer_size=100))
    large = h.open("10.0.0.2", transport=FakeTransport(buffer_size=700))
    h.open("10.0.0.3")
    for client in (small, large):
        subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.broadcast(update_of_size(150, "BTC-USD"))

    state = h.channel.state()
    assert state.outbox_bytes == 100 + 150 + 700 + 150
    assert state.outbox_largest_bytes == 700 + 150
