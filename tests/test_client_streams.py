"""The SDK's pure halves: continuity per topic (client/streams.py) and the retry policy
(client/policy.py), without sockets."""

from __future__ import annotations

import pytest

from wsgateway.book import checksum
from wsgateway.client import (
    ClosedByGateway,
    ConnectRefused,
    Gap,
    Reset,
    Snapshot,
    SubscribeRefused,
    TokenExpired,
    Update,
)
from wsgateway.client.policy import Backoff, after_close, after_error, after_refusal
from wsgateway.client.streams import Hole, Streams


def update(seq: int, topic: str = "A", **extra: object) -> dict[str, object]:
    return {"type": "update", "topic": topic, "seq": seq, "ts": 1.0, "data": {"n": seq}, **extra}


def test_a_fresh_topic_learns_its_epoch_from_seq_1_and_drops_duplicates() -> None:
    streams = Streams(("A",))
    assert streams.on_subscribed({"A": {"seq": 0, "epoch": ""}}) == []
    first = streams.on_update(update(1, epoch="E1"))
    assert first == Update("A", 1, "E1", 1.0, {"n": 1})
    assert streams.on_update(update(1)) is None
    assert isinstance(streams.on_update(update(2)), Update)
    assert streams.position("A") == ("E1", 2)
    assert streams.last("A") == {"n": 2}
    assert streams.since(("A",)) == {"A": {"seq": 2, "epoch": "E1"}}


def test_a_hole_asks_for_one_repair_and_the_replay_is_marked() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 5, "epoch": "E"}})
    assert streams.on_update(update(7)) == Hole("A")
    assert streams.on_update(update(8)) is None  # the repair is on its way
    assert streams.position("A") == ("E", 5)
    streams.on_subscribed({"A": {"seq": 8, "epoch": "E", "recovered": True}})
    replayed = [streams.on_update(update(n)) for n in (6, 7, 8, 9)]
    assert [u.replayed for u in replayed if isinstance(u, Update)] == [True, True, True, False]


def test_not_recovered_is_a_gap_and_the_stream_goes_on_from_the_new_position() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 5, "epoch": "E"}})
    gaps = streams.on_subscribed({"A": {"seq": 50, "epoch": "E", "recovered": False}})
    assert gaps == [Gap("A", 6, 50, "E", ("E", 5))]
    assert isinstance(streams.on_update(update(51)), Update)
    other = streams.on_subscribed({"A": {"seq": 3, "epoch": "F", "recovered": False}})
    assert other == [Gap("A", 1, 3, "F", ("E", 51))]


def test_a_reset_is_reported_with_the_gap_it_caused() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 5, "epoch": "E"}})
    frame = {"type": "reset", "topic": "A", "epoch": "F", "seq": 0}
    assert streams.on_reset(frame) == [Reset("A", "F", 0), Gap("A", 1, 0, "F", ("E", 5))]
    same = {"type": "reset", "topic": "A", "epoch": "F", "seq": 0}
    assert streams.on_reset(same) == [Reset("A", "F", 0)]  # nothing more lost
    assert isinstance(streams.on_update(update(1, epoch="F")), Update)


def test_an_unannounced_new_epoch_is_a_gap_then_its_update() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 5, "epoch": "E"}})
    gap = streams.on_update(update(1, epoch="F"))
    assert gap == Gap("A", 1, 0, "F", ("E", 5))
    assert streams.accept(update(1, epoch="F")).epoch == "F"


def book_frame(
    kind: str, seq: int, bids: list[list[str]], asks: list[list[str]], **extra: object
) -> dict[str, object]:
    """A book frame as the gateway sends it; ``crc`` (in extra) overrides the checksum of
    ``bids``/``asks`` taken as the whole book (right for snapshots)."""
    crc = extra.pop("crc", checksum([tuple(b) for b in bids], [tuple(a) for a in asks]))  # type: ignore[misc]
    data = {"bids": bids, "asks": asks, "checksum": crc}
    return {"type": kind, "topic": "A", "seq": seq, "epoch": "E", "ts": 2.0, "data": data, **extra}


def held(streams: Streams) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    book = streams.book("A")
    assert book is not None
    return book.bids.levels(), book.asks.levels()


def test_a_snapshot_sets_the_position_and_the_book_and_deltas_continue_it() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 7, "epoch": "E"}})
    snap = book_frame("snapshot", 7, [["100", "1"], ["99", "2"]], [["101", "3"]])
    assert streams.on_snapshot(snap) == [Snapshot("A", 7, "E", 2.0, snap["data"])]
    assert streams.position("A") == ("E", 7)
    after = ([("100", "1"), ("99", "2")], [("101", "3"), ("102", "1")])
    delta = book_frame("update", 8, [["98", "0"]], [["102", "1"]], crc=checksum(*after))
    update = streams.on_update(delta)
    assert isinstance(update, Update) and update.seq == 8
    assert held(streams) == after
    assert streams.last("A") == delta["data"]


def test_a_conflated_frame_continues_when_from_seq_is_the_next_one() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 3, "epoch": "E"}})
    merged = update(9, from_seq=4)
    verdict = streams.on_update(merged)
    assert verdict == Update("A", 9, "E", 1.0, {"n": 9}, from_seq=4)
    assert streams.position("A") == ("E", 9)
    assert streams.on_update(update(12, from_seq=11)) == Hole("A")  # 10 missing


def test_a_checksum_mismatch_drops_the_book_and_asks_for_a_snapshot() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 1, "epoch": "E"}})
    streams.on_snapshot(book_frame("snapshot", 1, [["100", "1"]], [["101", "1"]]))
    wrong = book_frame("update", 2, [["100", "2"]], [], crc=12345)
    verdict = streams.on_update(wrong)
    gap = Gap("A", 2, 2, "E", ("E", 1), reason="checksum")
    assert verdict == Hole("A", fresh=True, gap=gap)
    assert streams.book("A") is None
    assert streams.since(("A",)) == {}  # subscribed again without since
    assert streams.on_update(book_frame("update", 3, [], [])) is None  # dropped until the snapshot
    streams.on_subscribed({"A": {"seq": 5, "epoch": "E"}})
    snap = book_frame("snapshot", 5, [["100", "4"]], [["101", "1"]])
    assert [e.kind for e in streams.on_snapshot(snap)] == ["snapshot"]
    assert held(streams) == ([("100", "4")], [("101", "1")])
    assert streams.since(("A",)) == {"A": {"seq": 5, "epoch": "E"}}


def test_a_heartbeat_past_the_held_seq_is_a_hole_once() -> None:
    streams = Streams(("A", "B"))
    streams.on_subscribed({"A": {"seq": 4, "epoch": "E"}, "B": {"seq": 0, "epoch": ""}})
    beat = {"type": "heartbeat", "n": 1, "topics": {"A": {"seq": 4, "epoch": "E"}}}
    assert streams.on_heartbeat(beat) == []
    beat = {
        "type": "heartbeat",
        "n": 2,
        "topics": {"A": {"seq": 5, "epoch": "E"}, "B": {"seq": 1, "epoch": "F"}},
    }
    assert streams.on_heartbeat(beat) == [Hole("A"), Hole("B")]
    assert streams.on_heartbeat(beat) == []  # the repairs are on their way


def test_a_reset_of_a_book_asks_for_a_snapshot_and_a_topic_without_state_starts_empty() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 1, "epoch": "E"}})
    streams.on_snapshot(book_frame("snapshot", 1, [["100", "1"]], []))
    events = streams.on_reset({"type": "reset", "topic": "A", "epoch": "F", "seq": 0})
    assert events == [Reset("A", "F", 0), Gap("A", 1, 0, "F", ("E", 1)), Hole("A", fresh=True)]
    streams.on_subscribed({"A": {"seq": 0, "epoch": ""}})
    assert held(streams) == ([], [])
    first = book_frame("update", 1, [["50", "1"]], [], epoch="G")
    assert isinstance(streams.on_update(first), Update)
    assert held(streams) == ([("50", "1")], [])


def test_a_not_recovered_resume_of_a_book_waits_for_the_snapshot_it_brings() -> None:
    streams = Streams(("A",))
    streams.on_subscribed({"A": {"seq": 1, "epoch": "E"}})
    streams.on_snapshot(book_frame("snapshot", 1, [["100", "1"]], []))
    gaps = streams.on_subscribed({"A": {"seq": 9, "epoch": "E", "recovered": False}})
    assert gaps == [Gap("A", 2, 9, "E", ("E", 1))]
    assert held(streams) == ([], [])
    streams.on_snapshot(book_frame("snapshot", 9, [["90", "1"]], []))
    assert held(streams) == ([("90", "1")], [])


def test_with_a_wildcard_topics_join_as_they_come_and_holes_are_gaps() -> None:
    streams = Streams(("*",))
    assert isinstance(streams.on_update(update(40, topic="X")), Update)
    gap = streams.on_update(update(43, topic="X"))
    assert gap == Gap("X", 41, 42, "", ("", 40))
    assert streams.accept(update(43, topic="X")).seq == 43  # type: ignore[union-attr]


def test_backoff_doubles_to_its_maximum_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random=lambda: 0.5)
    assert [backoff.next() for _ in range(6)] == [0.75, 1.5, 3.0, 6.0, 6.0, 6.0]
    backoff.reset()
    assert backoff.next() == 0.75
    assert Backoff(0.5, 4.0, random=lambda: 0.0).soon() == 0.0
    with pytest.raises(ValueError):
        Backoff(0, 1, random=lambda: 0.0)


def test_closes_and_refusals_are_retried_only_when_waiting_can_help() -> None:
    backoff = Backoff(1.0, 8.0, random=lambda: 0.0)
    assert after_close(1012, "draining", backoff) == 0.0  # at once (jittered)
    assert after_close(1001, "", backoff) == 0.0
    assert after_close(1013, "slow", backoff) == 1.0
    assert after_close(None, "", backoff) == 2.0
    with pytest.raises(TokenExpired):
        after_close(1008, "token expired", backoff)
    with pytest.raises(ClosedByGateway):
        after_close(1008, "rate limit exceeded again and again", backoff)
    assert after_refusal("u", 503, "capacity", "", 7.0, backoff) == 7.0
    assert after_refusal("u", 429, "rate_limited", "", None, backoff) == 4.0
    for status in (400, 401, 403, 404):
        with pytest.raises(ConnectRefused):
            after_refusal("u", status, "x", "", None, backoff)
    assert after_error("rate_limited", "", 0.25, ("A",), backoff) == 0.25
    with pytest.raises(SubscribeRefused):
        after_error("invalid_topic", "bad", None, ("A",), backoff)
