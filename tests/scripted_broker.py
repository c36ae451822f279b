"""A broker for relay tests: its live feed is what the test puts in, its positions and
history what the test says the server holds. No socket, no timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

from wsgateway.brokers import (
    NO_POSITION,
    BrokerStats,
    History,
    Message,
    Position,
    Resync,
    Update,
)
from wsgateway.brokers.base import Snapshot, recent

from .fakes import make_update


class ScriptedBroker:
    """``held``: each topic's kept updates, oldest first; ``tops``: each topic's position on
    the server (its top, even when the history is trimmed); ``unreachable``: every read
    fails, as with Redis down."""

    def __init__(self) -> None:
        self.feed: asyncio.Queue[Sequence[Update] | Resync | None] = asyncio.Queue()
        self.held: dict[str, list[Update]] = {}
        self.tops: dict[str, Position] = {}
        self.unreachable = False

    @property
    def connected(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.feed.put_nowait(None)  # the relay ends after what was put in before

    async def publish(self, messages: Sequence[Message]) -> int:
        raise NotImplementedError

    async def batches(self) -> AsyncIterator[Sequence[Update] | Resync]:
        while (item := await self.feed.get()) is not None:
            yield item

    async def positions(self, channel: str, topics: Sequence[str]) -> dict[str, Position]:
        if self.unreachable:
            raise ConnectionError("redis is unreachable")
        return {topic: self.tops.get(topic, NO_POSITION) for topic in topics}

    async def history(self, channel: str, topic: str, since: Position, limit: int) -> History:
        if self.unreachable:
            raise ConnectionError("redis is unreachable")
        position = self.tops.get(topic, NO_POSITION)
        return History(position, recent(self.held.get(topic, []), position, since, limit))

    async def snapshot(self, channel: str, topic: str) -> Snapshot | None:
        if self.unreachable:
            raise ConnectionError("redis is unreachable")
        position = self.tops.get(topic)
        if position is None:
            return None
        held = self.held.get(topic)
        return Snapshot(position, 0.0, held[-1].data if held else None)

    def stats(self) -> BrokerStats:
        return BrokerStats()

    async def put_node(self, node: str, record: bytes, ttl: float) -> None:
        pass

    async def nodes(self) -> Mapping[str, bytes]:
        return {}

    def published(self, *updates: Update, live: bool = True) -> None:
        """The server numbered ``updates``: kept, and (``live``) sent on the feed too."""
        for update in updates:
            self.held.setdefault(update.topic, []).append(update)
            self.tops[update.topic] = Position(update.epoch, update.seq)
        if live:
            self.feed.put_nowait(list(updates))

    def server_holds(self, topic: str, epoch: str, seqs: range, top: int | None = None) -> None:
        """The server now holds ``seqs`` of ``topic`` in ``epoch`` (its top: the last)."""
        self.held[topic] = [make_update(topic, seq, epoch=epoch) for seq in seqs]
        self.tops[topic] = Position(epoch, seqs[-1] if top is None else top)
