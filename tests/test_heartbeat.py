"""Heartbeats (issue 9, section 2): the frame's content, its place among the updates, and
which topics it may report. A Channel with fake transports; the heartbeat's timer is
fired by hand (``Heartbeats.beat``), so nothing here waits for time to pass."""

from __future__ import annotations

import asyncio

from wsgateway.brokers.base import History, Position
from wsgateway.channel import Channel
from wsgateway.connection import Connection

from .fakes import EPOCH, IDLE_FOOTPRINT, Client, make_channel, make_update, subscribe

FRAMES = "wsgateway_frames_sent_total"


async def next_turn() -> None:
    await asyncio.sleep(0)


def beat(channel: Channel, conn: Connection) -> None:
    """Fire ``conn``'s heartbeat timer now, as the event loop would when it is due."""
    handle = channel.heartbeats.handle(conn)
    assert handle is not None
    handle.cancel()
    channel.heartbeats.beat(conn)


def kinds(client: Client) -> list[tuple[str, object]]:
    return [
        (m["type"], m.get("seq", m.get("n")))
        for m in client.messages()
        if m["type"] in ("update", "heartbeat")
    ]


async def test_a_heartbeat_follows_the_updates_it_reports_with_their_position() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD", "ETH-USD"])
    h.channel.set_heartbeat(client.conn, 5)
    for seq in (1, 2, 3):
        h.channel.broadcast(make_update("BTC-USD", seq, {"px": seq}, epoch="e1"))
    beat(h.channel, client.conn)
    await next_turn()
    h.channel.broadcast(make_update("BTC-USD", 4, epoch="e1"))
    h.clock.advance(5)
    beat(h.channel, client.conn)
    await next_turn()

    assert kinds(client) == [
        ("update", 1),
        ("update", 2),
        ("update", 3),
        ("heartbeat", 1),
        ("update", 4),
        ("heartbeat", 2),
    ]
    heartbeats = [m for m in client.messages() if m["type"] == "heartbeat"]
    # ETH-USD has no position here yet (nothing published): left out rather than guessed.
    assert heartbeats == [
        {
            "type": "heartbeat",
            "n": 1,
            "ts": EPOCH,
            "topics": {"BTC-USD": {"seq": 3, "epoch": "e1"}},
        },
        {
            "type": "heartbeat",
            "n": 2,
            "ts": EPOCH + 5,
            "topics": {"BTC-USD": {"seq": 4, "epoch": "e1"}},
        },
    ]
    assert h.value(FRAMES, kind="heartbeat") == 2
    # The next one is scheduled again, the interval after this one.
    handle = h.channel.heartbeats.handle(client.conn)
    assert handle is not None and not handle.cancelled()


async def test_a_reset_is_reported_after_the_reset_frame() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.set_heartbeat(client.conn, 1)
    h.channel.broadcast(make_update("BTC-USD", 7, epoch="e1"))
    h.channel.reset_topic("BTC-USD", Position("e2", 0))
    beat(h.channel, client.conn)
    await next_turn()
    messages = client.messages()
    assert [m["type"] for m in messages] == ["update", "reset", "heartbeat"]
    assert messages[2]["topics"] == {"BTC-USD": {"seq": 0, "epoch": "e2"}}


async def test_a_topic_being_joined_is_not_reported_until_its_replay_is_queued() -> None:
    h = make_channel()
    live, resuming = h.open(), h.open()
    subscribe(h.channel, live.conn, ["BTC-USD"])
    for seq in (1, 2, 3):
        h.channel.broadcast(make_update("BTC-USD", seq, epoch="e1"))
    h.channel.set_heartbeat(live.conn, 1)
    h.channel.set_heartbeat(resuming.conn, 1)
    # A resume from seq 1: pending until the broker answers (Gateway.subscribe awaits it).
    joining = h.channel.subscribe(resuming.conn, ["BTC-USD"], {"BTC-USD": Position("e1", 1)})
    assert [r.topic for r in joining.pending] == ["BTC-USD"]

    assert h.channel.heartbeat_positions(live.conn) == {"BTC-USD": {"seq": 3, "epoch": "e1"}}
    assert h.channel.heartbeat_positions(resuming.conn) == {}

    history = History(Position("e1", 3), [make_update("BTC-USD", s, epoch="e1") for s in (2, 3)])
    outcome = h.channel.complete(joining.pending[0], history)
    assert outcome is not None and outcome.recovered
    assert h.channel.heartbeat_positions(resuming.conn) == {"BTC-USD": {"seq": 3, "epoch": "e1"}}


async def test_a_wildcard_subscriber_gets_heartbeats_without_topics() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["*", "BTC-USD"])
    h.channel.broadcast(make_update("BTC-USD", 1, epoch="e1"))
    h.channel.set_heartbeat(client.conn, 1)
    beat(h.channel, client.conn)
    await next_turn()
    assert client.messages()[-1] == {"type": "heartbeat", "n": 1, "ts": EPOCH, "topics": {}}


async def test_the_latest_interval_wins_and_zero_stops_them() -> None:
    h = make_channel()
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.set_heartbeat(client.conn, 1)
    first = h.channel.heartbeats.handle(client.conn)
    assert first is not None
    beat(h.channel, client.conn)
    h.channel.set_heartbeat(client.conn, 30)
    assert first.cancelled()
    again = h.channel.heartbeats.handle(client.conn)
    assert again is not None
    loop = asyncio.get_running_loop()
    assert 29 < again.when() - loop.time() <= 30
    beat(h.channel, client.conn)
    await next_turn()
    assert [n for kind, n in kinds(client) if kind == "heartbeat"] == [1, 1]  # counts afresh

    again = h.channel.heartbeats.handle(client.conn)
    assert again is not None
    h.channel.set_heartbeat(client.conn, 0)
    assert again.cancelled()
    assert h.channel.footprint()["heartbeats"] == 0


async def test_nothing_is_kept_for_connections_that_did_not_ask_or_left() -> None:
    h = make_channel()
    quiet, asking = h.open(), h.open()
    subscribe(h.channel, quiet.conn, ["BTC-USD"])
    subscribe(h.channel, asking.conn, ["BTC-USD"])
    assert h.channel.footprint()["heartbeats"] == 0
    h.channel.set_heartbeat(asking.conn, 1)
    handle = h.channel.heartbeats.handle(asking.conn)
    assert handle is not None
    assert h.channel.footprint()["heartbeats"] == 1
    h.channel.remove(asking.conn, "client_closed")
    h.channel.remove(quiet.conn, "client_closed")
    assert handle.cancelled()
    assert h.channel.footprint() == IDLE_FOOTPRINT
    h.channel.set_heartbeat(asking.conn, 1)  # a subscribe answered after it left: nothing
    assert h.channel.footprint() == IDLE_FOOTPRINT


async def test_a_heartbeat_counts_against_the_outbox_like_any_reply() -> None:
    h = make_channel(max_outbox_bytes=1024)
    client = h.open()
    subscribe(h.channel, client.conn, ["BTC-USD"])
    h.channel.set_heartbeat(client.conn, 1)
    # A reader that stopped: its kernel holds past twice the limit, as its last write saw.
    client.transport.buffer_size = client.conn.backlog = 10 * 1024
    beat(h.channel, client.conn)
    assert client.conn.closing
    assert client.closer.calls == [(1013, "slow consumer")]
    assert h.channel.footprint()["heartbeats"] == 0


async def test_a_channel_default_heartbeat_runs_from_the_upgrade_until_the_client_stops_it() -> (
    None
):
    h = make_channel(position_heartbeat=5)
    client = h.open()
    handle = h.channel.heartbeats.handle(client.conn)
    assert handle is not None
    beat(h.channel, client.conn)
    await next_turn()
    assert [m["type"] for m in client.messages()] == ["heartbeat"]
    h.channel.set_heartbeat(client.conn, 0)
    assert h.channel.heartbeats.handle(client.conn) is None
