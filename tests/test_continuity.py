"""TopicPositions: what an update means for its topic (continuity.py), on a fake clock."""

from __future__ import annotations

from wsgateway.brokers.base import Position, Update
from wsgateway.continuity import TopicPositions, Verdict

from .fakes import FakeClock


def update(seq: int, epoch: str = "e1", topic: str = "BTC-USD") -> Update:
    return Update("ticker", topic, seq, 0.0, None, epoch)


def relayed(*seqs: int, epoch: str = "e1", ttl: float = 60.0) -> TopicPositions:
    positions = TopicPositions(ttl, FakeClock())
    for seq in seqs:
        positions.advance("BTC-USD", epoch, seq)
    return positions


def test_an_unknown_topic_takes_any_update() -> None:
    assert relayed().classify(update(57)) is Verdict.NEXT


def test_the_next_seq_is_next_an_older_one_a_duplicate_a_later_one_a_gap() -> None:
    positions = relayed(1, 2, 3)
    assert positions.classify(update(4)) is Verdict.NEXT
    assert positions.classify(update(3)) is Verdict.DUPLICATE
    assert positions.classify(update(1)) is Verdict.DUPLICATE
    assert positions.classify(update(5)) is Verdict.GAP
    assert positions.get("BTC-USD") == Position("e1", 3)


def test_another_epoch_is_a_new_epoch_whatever_its_seq() -> None:
    positions = relayed(1, 2)
    assert positions.classify(update(1, epoch="e2")) is Verdict.NEW_EPOCH
    assert positions.classify(update(3, epoch="e2")) is Verdict.NEW_EPOCH


def test_a_topic_learned_without_state_starts_its_first_epoch_at_seq_1() -> None:
    positions = relayed()
    positions.learn("BTC-USD", Position("", 0))
    assert positions.get("BTC-USD") is None  # learned, not relayed: not firm
    assert positions.classify(update(1, epoch="e9")) is Verdict.NEXT
    assert positions.classify(update(2, epoch="e9")) is Verdict.GAP


def test_a_learned_position_lets_earlier_updates_through_until_one_passes_it() -> None:
    """Updates published before the broker was asked may still be on their way: they are
    delivered (the clients that joined at the learned position skip them, resume.py)."""
    positions = relayed()
    positions.learn("BTC-USD", Position("e1", 10))
    assert positions.classify(update(8)) is Verdict.NEXT
    positions.advance("BTC-USD", "e1", 8)
    assert positions.position("BTC-USD") == Position("e1", 10)  # not moved back
    assert positions.classify(update(11)) is Verdict.NEXT
    positions.advance("BTC-USD", "e1", 11)
    assert positions.get("BTC-USD") == Position("e1", 11)
    assert positions.classify(update(9)) is Verdict.DUPLICATE  # firm from here on
    assert positions.classify(update(13)) is Verdict.GAP


def test_learn_never_overrides_a_relayed_position() -> None:
    positions = relayed(1, 2)
    positions.learn("BTC-USD", Position("e1", 40))
    assert positions.get("BTC-USD") == Position("e1", 2)


def test_reset_takes_the_new_position() -> None:
    positions = relayed(1, 2)
    positions.reset("BTC-USD", Position("e2", 0))
    assert positions.classify(update(1, epoch="e2")) is Verdict.NEXT


def test_idle_topics_without_subscribers_are_forgotten_after_the_ttl() -> None:
    clock = FakeClock()
    positions = TopicPositions(60.0, clock)
    positions.advance("idle", "e1", 1)
    positions.advance("watched", "e1", 1)
    clock.advance(30)
    positions.advance("busy", "e1", 1)
    clock.advance(31)
    assert positions.expire({"watched"}) == 1  # "idle" only
    assert set(positions.topics()) == {"watched", "busy"}
    clock.advance(60)
    assert positions.expire(set()) == 2
    assert len(positions) == 0
