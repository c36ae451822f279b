"""Where each topic stands in this process, and what a new update means for it.

The relay hands every update of a channel to its :class:`TopicPositions` before the
fan-out. In one process with the memory broker every update is the next one. With Redis,
live delivery (PUB/SUB) can lose updates while its connection is down or when the relay
falls too far behind; the broker's numbering (``epoch``, ``seq``) tells the relay so:

- the next ``seq`` in the same epoch: deliver it;
- a ``seq`` already delivered: drop it (a repair filled it from history first);
- a ``seq`` past the next one: a gap, filled from the broker's history before delivering;
- another epoch: the broker lost the topic's state (a Redis restart without persistence,
  an eviction, a topic idle past ``topic_ttl``): subscribers are told with a ``reset``.

Pure: plain values and a clock, no I/O (tests/test_continuity.py).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Container

from .brokers.base import Position, Update


class Verdict(enum.Enum):
    NEXT = "next"
    DUPLICATE = "duplicate"
    GAP = "gap"
    NEW_EPOCH = "new_epoch"


class _Entry:
    __slots__ = ("epoch", "firm", "seq", "touched")

    def __init__(self, epoch: str, seq: int, touched: float, firm: bool) -> None:
        self.epoch = epoch
        self.seq = seq
        self.touched = touched
        #: False for a position read from the broker rather than relayed here: updates up
        #: to it may still be on their way (published before the read, not yet relayed),
        #: so they are delivered, not dropped as duplicates
        self.firm = firm


class TopicPositions:
    """The last position relayed (or learned) per topic of one channel.

    Bounded: a topic idle for ``ttl`` seconds (the channel's topic_ttl, after which the
    broker forgets it too) is forgotten unless it still has subscribers here.
    """

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, topic: str) -> Position | None:
        """The position relayed here last, or None when not known (or not firm yet)."""
        entry = self._entries.get(topic)
        if entry is None or not entry.firm:
            return None
        return Position(entry.epoch, entry.seq)

    def classify(self, update: Update) -> Verdict:
        """What ``update`` is, compared with what was relayed for its topic."""
        entry = self._entries.get(update.topic)
        if entry is None:
            return Verdict.NEXT
        if update.epoch != entry.epoch:
            if entry.epoch == "" and entry.seq == 0:
                # The topic had no state when it was learned: its first epoch starts now.
                return Verdict.NEXT if update.seq == 1 else Verdict.GAP
            return Verdict.NEW_EPOCH
        if update.seq == entry.seq + 1:
            return Verdict.NEXT
        if update.seq <= entry.seq:
            return Verdict.NEXT if not entry.firm else Verdict.DUPLICATE
        return Verdict.GAP

    def position(self, topic: str) -> Position:
        """The position to repair a gap from (``("", 0)`` when unknown)."""
        entry = self._entries.get(topic)
        return Position("", 0) if entry is None else Position(entry.epoch, entry.seq)

    def advance(self, topic: str, epoch: str, seq: int) -> None:
        """Record that ``(epoch, seq)`` of ``topic`` was relayed."""
        entries = self._entries
        now = self._clock()
        entry = entries.get(topic)
        if entry is None:
            entries[topic] = _Entry(epoch, seq, now, True)
            return
        entries.move_to_end(topic)
        entry.touched = now
        if not entry.firm and entry.epoch == epoch and seq < entry.seq:
            return  # an update published before the learned position: it stays learned
        entry.epoch, entry.seq, entry.firm = epoch, seq, True

    def learn(self, topic: str, position: Position) -> None:
        """Remember a position read from the broker for a topic not relayed here yet, so
        that the next update is checked against it (not firm: see _Entry)."""
        if topic in self._entries:
            return
        self._entries[topic] = _Entry(position.epoch, position.seq, self._clock(), False)

    def reset(self, topic: str, position: Position) -> None:
        """Take ``position`` as the topic's position from now on (after a reset)."""
        self._entries.pop(topic, None)
        self._entries[topic] = _Entry(position.epoch, position.seq, self._clock(), True)

    def topics(self) -> list[str]:
        return list(self._entries)

    def forget(self, topic: str) -> None:
        self._entries.pop(topic, None)

    def expire(self, subscribed: Container[str]) -> int:
        """Forget topics idle past the ttl that have no subscriber here; returns how many.
        Least recently relayed first, so it stops at the first one still in use."""
        entries = self._entries
        horizon = self._clock() - self._ttl
        forgotten = 0
        while entries:
            topic, entry = next(iter(entries.items()))
            if entry.touched > horizon:
                break
            if topic in subscribed:
                entries.move_to_end(topic)
                entry.touched = self._clock()
                continue
            del entries[topic]
            forgotten += 1
        return forgotten
