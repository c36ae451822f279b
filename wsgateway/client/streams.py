"""Where each topic of a client stands, and what an incoming frame means for it. Pure.

The client's half of the protocol's continuity rules (docs/protocol.md, "What a client
should do"): every update must be the last ``seq`` + 1 in the same epoch. A duplicate (an
update a resume replayed twice, or one that was still in flight) is dropped; a hole inside
one connection asks for a repair (:class:`Hole`: the caller resubscribes the topic with
``since``); updates lost for good (``recovered: false``, a ``reset``, a new epoch) become a
:class:`~.events.Gap`. No sockets, no clock: the caller feeds parsed frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .events import Event, Gap, Position, Reset, Update


@dataclass(slots=True)
class TopicStream:
    """One topic: its position, its newest data, and this connection's bookkeeping."""

    epoch: str = ""
    seq: int = 0
    #: a subscribed reply gave it a position: later subscribes resume it with ``since``
    known: bool = False
    data: Any = None
    #: this connection: updates up to this seq are replayed history (``recovered: true``)
    replay_until: int = 0
    #: this connection: a resubscribe for a hole is on its way; further holes wait for it
    repairing: bool = False


@dataclass(frozen=True, slots=True)
class Hole:
    """An update skipped seqs inside one connection: resubscribe ``topic`` with ``since``."""

    topic: str


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


class Streams:
    """The client's topics. Each ``on_*`` takes a parsed server frame and returns what it
    means: events to yield, a :class:`Hole` to repair, or nothing."""

    def __init__(self, topics: tuple[str, ...]) -> None:
        self.topics = {topic: TopicStream() for topic in topics}

    def position(self, topic: str) -> Position:
        stream = self.topics[topic]
        return stream.epoch, stream.seq

    def last(self, topic: str) -> Any:
        return self.topics[topic].data

    def since(self, topics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The ``since`` of a subscribe to ``topics``: every topic that has a position."""
        return {
            topic: {"seq": stream.seq, "epoch": stream.epoch}
            for topic in topics
            if (stream := self.topics[topic]).known
        }

    def disconnected(self) -> None:
        """A connection ended: its replay and repairs end with it (the next one resumes
        every topic with ``since``)."""
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
            if recovered is True:
                stream.replay_until = seq
            elif recovered is False:
                gap = lost(stream, topic, epoch, seq)
                if gap is not None:
                    events.append(gap)
                stream.epoch, stream.seq = epoch, seq
            elif not stream.known:
                stream.epoch, stream.seq = epoch, seq
            # else: "since" was ignored (the connection already had the topic): keep ours.
            stream.known = True
        return events

    def on_update(self, frame: dict[str, Any]) -> Update | Gap | Hole | None:
        """An ``update``: the next one (to yield), a duplicate (None), a hole (repair it) or
        the first update of an epoch the client did not know (a :class:`Gap`; the update
        itself is then taken by :meth:`accept`)."""
        stream = self.topics.get(frame["topic"])
        if stream is None:
            return None
        seq = int(frame["seq"])
        epoch = frame.get("epoch")
        if isinstance(epoch, str) and epoch != stream.epoch:
            fresh = stream.epoch == "" and stream.seq == 0
            if not fresh or seq != 1:
                # A new numbering the gateway did not announce with a reset (or not yet).
                gap = lost(stream, frame["topic"], epoch, seq - 1)
                stream.epoch, stream.seq = epoch, seq - 1
                if gap is not None:
                    return gap
            stream.epoch = epoch
        if seq <= stream.seq:
            return None
        if seq > stream.seq + 1:
            if stream.repairing:
                return None  # the resubscribe will replay it
            stream.repairing = True
            return Hole(frame["topic"])
        return self.accept(frame)

    def accept(self, frame: dict[str, Any]) -> Update:
        """Take the update that continues its topic."""
        stream = self.topics[frame["topic"]]
        stream.seq = seq = int(frame["seq"])
        stream.data = frame.get("data")
        stream.known = True
        return Update(
            frame["topic"],
            seq,
            stream.epoch,
            float(frame.get("ts", 0.0)),
            stream.data,
            seq <= stream.replay_until,
        )

    def on_reset(self, frame: dict[str, Any]) -> list[Event]:
        """A ``reset``: the topic continues from its ``(epoch, seq)``; a Gap when the client
        lost updates by it."""
        stream = self.topics.get(frame["topic"])
        if stream is None:
            return []
        topic, epoch, seq = frame["topic"], str(frame["epoch"]), int(frame["seq"])
        events: list[Event] = [Reset(topic, epoch, seq)]
        gap = lost(stream, topic, epoch, seq)
        if gap is not None:
            events.append(gap)
        stream.epoch, stream.seq, stream.known = epoch, seq, True
        stream.replay_until = 0
        return events
