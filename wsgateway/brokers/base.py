"""The broker role: what the app needs from any broker, and the values it moves.

A broker numbers each message per (channel, topic): ``seq`` counts 1, 2, 3... within an
``epoch``, a random id the broker picks when it starts numbering a topic afresh (the first
publish, or after it lost the topic's state: a Redis restart without persistence, an
eviction, an idle topic forgotten after ``topic_ttl``). A client's place in a topic is a
:class:`Position`, ``(epoch, seq)``; the broker keeps the last ``history_size`` updates of
each topic for ``history_ttl`` seconds so that a client can resume from its position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a publisher hands it in: not yet numbered."""

    channel: str
    topic: str
    data: Any


@dataclass(frozen=True, slots=True)
class Update:
    """A numbered message: ``seq`` counts the messages of (channel, topic) without gaps
    within ``epoch``."""

    channel: str
    topic: str
    seq: int
    ts: float
    data: Any
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a topic stands: the ``seq`` of its latest update in ``epoch``.

    ``Position("", 0)`` is a topic the broker holds no state for (never published, or
    forgotten): its next update starts a new epoch at seq 1.
    """

    epoch: str
    seq: int


NO_POSITION = Position("", 0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A ``last`` or ``book`` topic's state at ``position``: the value (or the whole book,
    as book.delta_data makes it) that reflects every update up to it. ``ts`` is the ``ts``
    of the update at ``position``."""

    position: Position
    ts: float
    data: Any


@dataclass(frozen=True, slots=True)
class History:
    """The answer to :meth:`Broker.history`."""

    #: the topic's latest position when the history was read
    position: Position
    #: the updates after the asked seq up to ``position``, in order, when the broker could
    #: give all of them (same epoch, not trimmed or expired, at most ``limit``); else None
    updates: Sequence[Update] | None
    #: the topic's state at ``position``, to be sent instead of the updates (a subscribe to
    #: a last or book topic, or a resume that could not be recovered); filled in by the
    #: gateway from :meth:`Broker.snapshot`
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much of one channel's past a broker keeps (per topic)."""

    #: updates kept per topic (0: none; resume then only ever answers recovered: false)
    size: int = 100
    #: seconds an update stays in the history
    ttl: float = 300.0
    #: seconds a topic's numbering (epoch, seq) outlives its last publish; after it the
    #: broker forgets the topic and its next publish starts a new epoch
    topic_ttl: float = 86_400.0
    #: what else a topic keeps, with its numbering and for as long: nothing (stream), its
    #: latest value (last) or its order book (book, messages are book.Delta)
    mode: str = "stream"
    #: price levels a book keeps per side
    max_book_levels: int = 1000
    #: book updates carry the checksum of the book after them
    checksum: bool = True


def recent(
    history: Sequence[Update], position: Position, since: Position, limit: int
) -> list[Update] | None:
    """What :meth:`Broker.history` answers, from the updates a broker keeps of a topic
    (``history``, oldest first) and its ``position``: the updates after ``since`` up to
    ``position``, if all are there. Every broker answers through this one rule.

    None when ``since`` is in another epoch (an empty ``since.epoch`` is the client's
    "before the first update": it matches any epoch whose history still starts at seq 1),
    when more than ``limit`` are missing, or when the oldest kept update is past
    ``since.seq + 1`` (trimmed or expired).
    """
    missing = position.seq - since.seq
    if since.epoch not in ("", position.epoch) or missing < 0:
        return None
    if since.epoch == "" and since.seq != 0:
        return None
    if missing == 0:
        return []
    if missing > limit or len(history) < missing:
        return None
    updates = list(history)[-missing:]
    if updates[0].seq != since.seq + 1:
        return None
    return updates


class Resync:
    """Yielded by :meth:`Broker.batches` in place of a batch when live delivery may have
    missed updates (the broker's connection came back): the relay checks every topic it
    serves against :meth:`Broker.positions` and repairs or resets it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC = Resync()


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Counters a broker keeps about itself, read at scrape time (metrics.py)."""

    #: times the connection to the broker's server was lost and made again
    reconnects: int = 0
    #: publishes refused because the broker's server could not be reached or failed
    publish_errors: int = 0
    #: probes that did not come back in time (a deaf subscription, rebuilt)
    probe_failures: int = 0


class Broker(Protocol):
    """Moves messages from publishers to every gateway process's relay loop, and keeps
    each topic's position and recent history."""

    @property
    def connected(self) -> bool:
        """True while messages can flow; the app reports it on /readyz and in metrics."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> int:
        """Number, store and send ``messages``; returns how many were accepted.

        Raises ConnectionError (or a subclass, or TimeoutError) when they could not be
        published; the gateway answers 503. A batch is published whole or not at all, and
        never twice.
        """
        ...

    def batches(self) -> AsyncIterator[Sequence[Update] | Resync]:
        """The numbered messages of every process's publishers, in batches, in seq order
        per topic; :data:`RESYNC` when some may have been missed."""
        ...

    async def positions(self, channel: str, topics: Sequence[str]) -> dict[str, Position]:
        """The latest position of each topic (:data:`NO_POSITION` for a topic without
        state). Creates no state."""
        ...

    async def history(self, channel: str, topic: str, since: Position, limit: int) -> History:
        """The updates of ``topic`` after ``since.seq``, when all of them (at most
        ``limit``) are still kept in ``since.epoch``."""
        ...

    async def snapshot(self, channel: str, topic: str) -> Snapshot | None:
        """The state of a ``last`` or ``book`` topic with its position, read together; None
        for a topic without state (or on a ``stream`` channel)."""
        ...

    def stats(self) -> BrokerStats: ...

    async def put_node(self, node: str, record: bytes, ttl: float) -> None:
        """Store this process's stats record (cluster.py) for ``ttl`` seconds."""
        ...

    async def nodes(self) -> Mapping[str, bytes]:
        """Every process's latest stats record, by node id."""
        ...
