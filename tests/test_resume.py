"""Subscribe with a position (resume.py, Channel.subscribe/complete): every update once, in
order, whatever arrives while the broker is asked."""

from __future__ import annotations

from wsgateway.brokers.base import NO_POSITION, History, Position, Update
from wsgateway.resume import Recovery, Step

from .fakes import Client, make_channel, make_update, subscribe


def update(seq: int, epoch: str = "e1") -> Update:
    return make_update("BTC-USD", seq, epoch=epoch)


def history(top: int, *seqs: int, epoch: str = "e1") -> History:
    return History(Position(epoch, top), [update(seq, epoch) for seq in seqs])


def frame_of(u: Update) -> bytes:
    return f"{u.epoch}:{u.seq}".encode()


def test_pending_buffers_then_merge_sends_history_then_buffered_past_it() -> None:
    recovery = Recovery(None, "BTC-USD", Position("e1", 41))
    for seq in (44, 45):  # relayed while the history was being read
        assert recovery.offer(update(seq), frame_of(update(seq))) is False
    outcome = recovery.merge(history(44, 42, 43, 44), frame_of)
    assert outcome.frames == [b"e1:42", b"e1:43", b"e1:44", b"e1:45"]
    assert outcome.position == Position("e1", 44)  # the reply's seq: the top when asked
    assert outcome.top == Position("e1", 45)
    assert (outcome.recovered, outcome.replayed) == (True, 3)
    assert outcome.reply_entry() == {"seq": 44, "epoch": "e1", "recovered": True}
    assert recovery.step is Step.CATCHING_UP


def test_catching_up_skips_what_the_client_has_and_joins_past_it() -> None:
    recovery = Recovery(None, "BTC-USD", Position("e1", 41))
    recovery.merge(history(44, 42, 43, 44), frame_of)
    assert recovery.offer(update(43), b"") is False  # still on its way here: skipped
    assert recovery.offer(update(44), b"") is False
    assert recovery.offer(update(45), b"") is True


def test_history_that_no_longer_reaches_back_is_not_recovered_and_replays_nothing() -> None:
    recovery = Recovery(None, "BTC-USD", Position("e1", 41))
    recovery.offer(update(51), b"e1:51")
    outcome = recovery.merge(History(Position("e1", 50), None), frame_of)
    assert outcome.reply_entry() == {"seq": 50, "epoch": "e1", "recovered": False}
    assert outcome.frames == [b"e1:51"]  # live from the reply's position on


def test_without_since_the_reply_has_no_recovered_field() -> None:
    recovery = Recovery(None, "BTC-USD", None)
    outcome = recovery.merge(History(Position("e1", 7), []), frame_of)
    assert outcome.reply_entry() == {"seq": 7, "epoch": "e1"}
    assert outcome.frames == []


def test_a_reset_while_pending_answers_from_the_new_position() -> None:
    recovery = Recovery(None, "BTC-USD", Position("e1", 41))
    recovery.offer(update(42), b"e1:42")
    recovery.reset(Position("e2", 0))
    recovery.offer(update(1, "e2"), b"e2:1")
    outcome = recovery.merge(history(42, 42), frame_of)
    assert outcome.reply_entry() == {"seq": 0, "epoch": "e2", "recovered": False}
    assert outcome.frames == [b"e2:1"]


def test_a_topic_without_state_takes_its_first_epoch_from_the_buffer() -> None:
    recovery = Recovery(None, "BTC-USD", None)
    recovery.offer(update(1, "e5"), b"e5:1")
    recovery.offer(update(2, "e5"), b"e5:2")
    outcome = recovery.merge(History(NO_POSITION, []), frame_of)
    assert outcome.frames == [b"e5:1", b"e5:2"]
    assert outcome.top == Position("e5", 2)


# -- on a channel --------------------------------------------------------------------------------


def seqs(client: Client) -> list[int]:
    return [m["seq"] for m in client.messages() if m["type"] == "update"]


async def test_a_known_topic_is_joined_at_once_with_its_relayed_position() -> None:
    h = make_channel()
    h.channel.broadcast(update(1))
    client = h.open()
    joining = h.channel.subscribe(client.conn, ["BTC-USD"])
    assert (joining.known, joining.pending) == ({"BTC-USD": Position("e1", 1)}, [])


async def test_updates_relayed_while_the_broker_answers_reach_the_client_once_in_order() -> None:
    h = make_channel()
    for seq in range(1, 4):
        h.channel.broadcast(update(seq))
    client = h.open()
    joining = h.channel.subscribe(client.conn, ["BTC-USD"], {"BTC-USD": Position("e1", 1)})
    [recovery] = joining.pending
    h.channel.broadcast(update(4))  # relayed during the await: buffered
    outcome = h.channel.complete(recovery, history(5, 2, 3, 4, 5))  # the broker is ahead
    assert outcome is not None
    for frame in outcome.frames:
        h.channel.send_update(client.conn, frame)
    h.channel.broadcast(update(5))  # on its way when the history was read: skipped
    h.channel.broadcast(update(6))
    h.channel.flush()
    assert seqs(client) == [2, 3, 4, 5, 6]
    assert h.channel.footprint()["recovering"] == 0


async def test_a_client_that_leaves_while_pending_leaves_nothing_behind() -> None:
    h = make_channel()
    h.channel.broadcast(update(1))
    client = h.open()
    [recovery] = h.channel.subscribe(client.conn, ["BTC-USD"], {"BTC-USD": NO_POSITION}).pending
    h.channel.remove(client.conn, "client_closed")
    assert h.channel.complete(recovery, history(1, 1)) is None
    assert h.channel.footprint()["recovering"] == 0


async def test_abandon_undoes_the_pending_subscriptions() -> None:
    h = make_channel()
    client = h.open()
    joining = h.channel.subscribe(client.conn, ["BTC-USD", "ETH-USD"])
    h.channel.abandon(client.conn, joining)
    assert client.conn.topics == set()
    assert h.channel.footprint()["recovering"] == 0
    assert h.channel.state().subscriptions == 0


async def test_reset_reaches_subscribers_and_wildcards_and_turns_pending_replies() -> None:
    h = make_channel()
    h.channel.broadcast(update(1))
    joined, everything, joining = h.open(), h.open(), h.open()
    subscribe(h.channel, joined.conn, ["BTC-USD"])
    subscribe(h.channel, everything.conn, ["*"])
    [pending] = h.channel.subscribe(
        joining.conn, ["BTC-USD"], {"BTC-USD": Position("e1", 0)}
    ).pending
    assert h.channel.reset_topic("BTC-USD", Position("e2", 0)) == 2
    h.channel.broadcast(update(1, "e2"))
    outcome = h.channel.complete(pending, history(1, 1))
    assert outcome is not None and outcome.reply_entry()["epoch"] == "e2"
    h.channel.flush()
    for client in (joined, everything):
        reset, first = client.messages()
        assert reset == {
            "type": "reset",
            "channel": "ticker",
            "topic": "BTC-USD",
            "epoch": "e2",
            "seq": 0,
        }
        assert (first["seq"], first["epoch"]) == (1, "e2")  # seq 1 names its epoch
    assert h.value("wsgateway_resets_sent_total") == 2


async def test_a_known_topic_waits_with_the_others_when_the_reply_needs_the_broker() -> None:
    """Nothing of a subscribe reaches the client before its reply: a topic known here joins
    through a recovery too when another topic of the request needs the broker."""
    h = make_channel()
    h.channel.broadcast(update(1))
    client = h.open()
    joining = h.channel.subscribe(client.conn, ["BTC-USD", "ETH-USD"])
    assert joining.known == {"BTC-USD": Position("e1", 1)}
    assert sorted(r.topic for r in joining.pending) == ["BTC-USD", "ETH-USD"]
    h.channel.broadcast(update(2))  # while the broker is asked about ETH-USD: held back
    h.channel.flush()
    assert client.messages() == []
    btc = next(r for r in joining.pending if r.topic == "BTC-USD")
    outcome = h.channel.complete(btc, History(Position("e1", 1), []))
    assert outcome is not None and outcome.reply_entry() == {"seq": 1, "epoch": "e1"}
    for frame in outcome.frames:
        h.channel.send_update(client.conn, frame)
    h.channel.broadcast(update(3))  # joined: live from here
    h.channel.flush()
    assert seqs(client) == [2, 3]
