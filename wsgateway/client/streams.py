"""Where each topic of a client stands, and what an incoming frame means for it. Pure.

The client's half of the protocol's continuity rules (docs/protocol.md, "What a client
should do"): every update must continue the last ``seq`` in the same epoch (``seq`` + 1, or
a conflated frame whose ``from_seq`` is ``seq`` + 1). A duplicate (an update a resume
replayed twice, or one that was still in flight) is dropped; a hole inside one connection
asks for a repair (:class:`Hole`: the caller resubscribes the topic with ``since``); updates
lost for good (``recovered: false``, a ``reset``, a new epoch) become a
:class:`~.events.Gap`. A ``snapshot`` sets the topic's position and replaces its state.

Each topic keeps its newest value and, when its data are book levels (``bids``/``asks``),
a copy of the book (:mod:`wsgateway.book`) checked against every ``checksum`` the gateway
sends. A book that disagrees, or that a ``reset`` broke, cannot be mended by a replay: the
topic is subscribed again without ``since`` (``Hole(fresh=True)``) and its updates are
dropped until the snapshot. No sockets, no clock: the caller feeds parsed frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..book import Book, Delta, InvalidDelta, read_data
from .events import Event, Gap, Position, Reset, Snapshot, Update


@dataclass(slots=True)
class TopicStream:
    """One topic: its position, its newest data and book, and this connection's
    bookkeeping."""

    epoch: str = ""
    seq: int = 0
    #: a subscribed reply gave it a position: later subscribes resume it with ``since``
    known: bool = False
    data: Any = None
    #: the topic's book, when its data are book levels (None: not a book, or not trusted)
    book: Book | None = None
    #: this connection: updates up to this seq are replayed history (``recovered: true``)
    replay_until: int = 0
    #: this connection: a resubscribe for a hole is on its way; further holes wait for it
    repairing: bool = False
    #: the book cannot be trusted: the topic is subscribed again without ``since`` and its
    #: updates are dropped until the snapshot (kept across reconnects)
    resync: bool = False


@dataclass(frozen=True, slots=True)
class Hole:
    """Resubscribe ``topic``: with ``since`` (a hole inside one connection, or a heartbeat
    ahead of the client), or, ``fresh``, without it to get a snapshot. ``gap``: an event to
    yield first."""

    topic: str
    fresh: bool = False
    gap: Gap | None = None


def lost(stream: TopicStream, topic: str, epoch: str, seq: int) -> Gap | None:
    """The updates ``stream`` misses if the topic now stands at ``(epoch, seq)``, if any.
    A stream that held nothing yet (no epoch, seq 0) counts as the start of any epoch."""
    fresh = stream.epoch == "" and stream.seq == 0
    if epoch == stream.epoch or fresh:
        first = stream.seq + 1 if epoch == stream.epoch else 1
        if seq < first:
            return None
        return Gap(topic, first, seq, epoch, (stream.epoch, stream.seq))
    # Another epoch: whatever followed our last update in the old one is gone as well.
    return Gap(topic, 1, seq, epoch, (stream.epoch, stream.seq))


def is_book_data(data: object) -> bool:
    """Book levels (``{"bids": [...], "asks": [...]}``), as a ``book`` topic sends them."""
    return isinstance(data, Mapping) and ("bids" in data or "asks" in data)


def book_delta(data: object) -> tuple[Delta, int | None] | None:
    """The delta and checksum of book data; None for data that are not book levels."""
    if not is_book_data(data):
        return None
    try:
        return read_data(data)
    except InvalidDelta:
        return None  # a last-value topic whose data happen to have a "bids" key


class Streams:
    """The client's topics. Each ``on_*`` takes a parsed server frame and returns what it
    means: events to yield, a :class:`Hole` to repair, or nothing.

    With ``"*"`` among ``topics`` (a tool that does not reconnect), topics are added as
    their frames arrive; nothing can be repaired (a resubscribe cannot name them), so a
    hole is a :class:`Gap`, and their books are not kept.
    """

    def __init__(self, topics: tuple[str, ...]) -> None:
        self.wildcard = "*" in topics
        self.topics = {topic: TopicStream() for topic in topics if topic != "*"}

    def _stream(self, topic: str) -> TopicStream | None:
        stream = self.topics.get(topic)
        if stream is None and self.wildcard:
            stream = self.topics[topic] = TopicStream()
        return stream

    def position(self, topic: str) -> Position:
        stream = self.topics.get(topic) or TopicStream()
        return stream.epoch, stream.seq

    def last(self, topic: str) -> Any:
        stream = self.topics.get(topic)
        return stream.data if stream else None

    def book(self, topic: str) -> Book | None:
        stream = self.topics.get(topic)
        return stream.book if stream else None

    def since(self, topics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The ``since`` of a subscribe to ``topics``: every topic that has a position
        (but one being resynced: it wants a snapshot, not a replay)."""
        return {
            topic: {"seq": stream.seq, "epoch": stream.epoch}
            for topic in topics
            if (stream := self.topics.get(topic)) is not None and stream.known and not stream.resync
        }

    def disconnected(self) -> None:
        """A connection ended: its replay and repairs end with it (the next one resumes
        every topic with ``since``, or subscribes a resynced one afresh)."""
        for stream in self.topics.values():
            stream.replay_until = 0
            stream.repairing = False

    def on_subscribed(self, positions: dict[str, Any]) -> list[Event]:
        """A ``subscribed`` reply: adopt the positions of new topics; for resumed ones
        (``recovered``), expect the replay or report what was lost."""
        events: list[Event] = []
        for topic, position in positions.items():
            stream = self.topics.get(topic)
            if stream is None:
                continue
            epoch, seq = str(position["epoch"]), int(position["seq"])
            stream.repairing = False
            recovered = position.get("recovered")
            if stream.resync:
                # The snapshot at this position follows; a topic without state has none
                # (its book starts empty).
                stream.epoch, stream.seq = epoch, seq
                if seq == 0 and recovered is None:
                    stream.resync = False
                    stream.book = Book()
            elif recovered is True:
                stream.replay_until = seq
            elif recovered is False:
                gap = lost(stream, topic, epoch, seq)
                if gap is not None:
                    events.append(gap)
                stream.epoch, stream.seq = epoch, seq
                if stream.book is not None:
                    stream.book = Book()  # the snapshot that follows fills it
            elif not stream.known:
                stream.epoch, stream.seq = epoch, seq
            # else: "since" was ignored (the connection already had the topic): keep ours.
            stream.known = True
        return events

    def on_update(self, frame: dict[str, Any]) -> Update | Gap | Hole | None:
        """An ``update``: the next one (to yield), a duplicate (None), a hole (repair it) or
        the first update of an epoch the client did not know (a :class:`Gap`; the update
        itself is then taken by :meth:`accept`)."""
        topic = frame["topic"]
        stream = self._stream(topic)
        if stream is None or stream.resync:
            return None  # not ours, or the snapshot will replace what it would change
        seq = int(frame["seq"])
        first = int(frame.get("from_seq") or seq)
        epoch = frame.get("epoch")
        if self.wildcard and not stream.known:
            # "*" has no positions: a topic starts wherever its first frame is.
            stream.known, stream.seq = True, first - 1
            stream.epoch = epoch if isinstance(epoch, str) else ""
        if isinstance(epoch, str) and epoch != stream.epoch:
            fresh = stream.epoch == "" and stream.seq == 0
            if not fresh or first != 1:
                # A new numbering the gateway did not announce with a reset (or not yet).
                gap = lost(stream, topic, epoch, first - 1)
                stream.epoch, stream.seq = epoch, first - 1
                if stream.book is not None and not self.wildcard:
                    if first != 1:  # the new epoch's book so far is unknown: ask for it
                        stream.resync, stream.book = True, None
                        return Hole(topic, fresh=True, gap=gap)
                    stream.book = Book()  # a new epoch's book starts empty
                if gap is not None:
                    return gap
            stream.epoch = epoch
        if seq <= stream.seq:
            return None
        if first > stream.seq + 1:
            if self.wildcard:  # nothing to resubscribe: report it and go on
                gap = Gap(
                    topic, stream.seq + 1, first - 1, stream.epoch, (stream.epoch, stream.seq)
                )
                stream.seq = first - 1
                return gap
            if stream.repairing:
                return None  # the resubscribe will replay it
            stream.repairing = True
            return Hole(topic)
        return self.accept(frame)

    def accept(self, frame: dict[str, Any]) -> Update | Hole:
        """Take the update that continues its topic (and apply it to the topic's book: a
        book that then disagrees with the frame's checksum is a fresh :class:`Hole`)."""
        topic = frame["topic"]
        stream = self.topics[topic]
        previous = (stream.epoch, stream.seq)
        stream.seq = seq = int(frame["seq"])
        stream.data = data = frame.get("data")
        stream.known = True
        parsed = None if self.wildcard else book_delta(data)
        if parsed is not None:
            delta, crc = parsed
            if stream.book is None:
                stream.book = Book()
            stream.book.apply(delta)
            if crc is not None and stream.book.checksum() != crc:
                stream.resync, stream.book = True, None
                gap = Gap(topic, seq, seq, stream.epoch, previous, reason="checksum")
                return Hole(topic, fresh=True, gap=gap)
        from_seq = frame.get("from_seq")
        return Update(
            topic,
            seq,
            stream.epoch,
            float(frame.get("ts", 0.0)),
            data,
            seq <= stream.replay_until,
            None if from_seq is None else int(from_seq),
        )

    def on_snapshot(self, frame: dict[str, Any]) -> list[Event]:
        """A ``snapshot``: the topic's whole state at its ``seq``; it replaces the topic's
        value, book and position. (A snapshot whose own checksum disagrees is reported as
        a checksum :class:`Gap` but not asked for again: the next one would say the same.)"""
        topic = frame["topic"]
        stream = self._stream(topic)
        if stream is None:
            return []
        previous = (stream.epoch, stream.seq)
        stream.seq = seq = int(frame["seq"])
        stream.epoch = str(frame.get("epoch") or stream.epoch)
        stream.data = data = frame.get("data")
        stream.known = True
        stream.resync = stream.repairing = False
        stream.replay_until = 0
        events: list[Event] = [
            Snapshot(topic, seq, stream.epoch, float(frame.get("ts", 0.0)), data)
        ]
        parsed = None if self.wildcard else book_delta(data)
        stream.book = None
        if parsed is not None:
            delta, crc = parsed
            book = Book()
            book.apply(Delta(delta.bids, delta.asks, snapshot=True))
            if crc is not None and book.checksum() != crc:
                events.append(Gap(topic, seq, seq, stream.epoch, previous, reason="checksum"))
            else:
                stream.book = book
        return events

    def on_heartbeat(self, frame: dict[str, Any]) -> list[Hole]:
        """A ``heartbeat``: a topic whose position there is past ours lost updates (the
        heartbeat never runs ahead of the frames before it): repair it with ``since``."""
        holes: list[Hole] = []
        topics = frame.get("topics")
        if self.wildcard or not isinstance(topics, dict):
            return holes
        for topic, position in topics.items():
            stream = self.topics.get(topic)
            if stream is None or not stream.known or stream.resync or stream.repairing:
                continue
            if not isinstance(position, dict):
                continue
            epoch, seq = str(position.get("epoch", "")), int(position.get("seq", 0))
            if seq == 0 or (epoch == stream.epoch and seq <= stream.seq):
                continue
            stream.repairing = True
            holes.append(Hole(topic))
        return holes

    def on_reset(self, frame: dict[str, Any]) -> list[Event | Hole]:
        """A ``reset``: the topic continues from its ``(epoch, seq)``; a Gap when the client
        lost updates by it. A book cannot continue over lost updates: it is asked for
        afresh (a fresh :class:`Hole`)."""
        stream = self.topics.get(frame["topic"])
        if stream is None:
            return []
        topic, epoch, seq = frame["topic"], str(frame["epoch"]), int(frame["seq"])
        events: list[Event | Hole] = [Reset(topic, epoch, seq)]
        gap = lost(stream, topic, epoch, seq)
        if gap is not None:
            events.append(gap)
        stream.epoch, stream.seq, stream.known = epoch, seq, True
        stream.replay_until = 0
        if stream.book is not None and not self.wildcard:
            stream.resync, stream.book = True, None
            events.append(Hole(topic, fresh=True))
        return events
