"""The in-memory broker: one process, no network; the embedded default.

Besides numbering and queueing, it keeps what a Redis broker keeps, in the same bounds: per
topic an epoch, the last seq and the last ``history_size`` updates, and on ``last`` and
``book`` channels the latest value or the order book (book.py), applied in seq order. A
topic's history is dropped once it is ``history_ttl`` old and its numbering once the topic
has been idle for ``topic_ttl`` (its next publish starts a new epoch), so per-topic state is
bounded by the topics published recently, not by every topic ever published.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson

from ..book import Book, delta_data
from .base import (
    NO_POSITION,
    BrokerStats,
    History,
    HistoryPolicy,
    Message,
    Position,
    Resync,
    Snapshot,
    Update,
    recent,
)

# Batches waiting for the relay loop; past this, publishers wait (backpressure, not loss).
QUEUE_BATCHES = 1024
# Messages waiting for (or in) the relay loop; past this, publishers wait too. The relay
# pauses while a client lags (Channel.pace), and 1024 batches of 10,000 messages would hold
# gigabytes meanwhile; 100,000 messages are tens of MB.
QUEUE_MESSAGES = 100_000
DEFAULT_POLICY = HistoryPolicy()


def new_epoch() -> str:
    """A random epoch id: 8 URL-safe characters."""
    return secrets.token_urlsafe(6)


class TopicState:
    """One topic's numbering and history, and its latest value or its book."""

    __slots__ = ("book", "epoch", "history", "last_publish", "seq", "value")

    def __init__(self, epoch: str, policy: HistoryPolicy) -> None:
        self.epoch = epoch
        self.seq = 0
        self.last_publish = 0.0
        self.history: deque[Update] = deque(maxlen=policy.size)
        #: the data of the latest update (mode last)
        self.value: Any = None
        self.book = Book(policy.max_book_levels) if policy.mode == "book" else None

    def apply(self, data: Any, checksum: bool) -> Any:
        """Keep what the update's ``data`` changes; returns the update's data as sent (for
        a book: what changed, with the checksum, book.py)."""
        book = self.book
        if book is None:
            self.value = data
            return data
        changes = book.apply(data)
        return orjson.Fragment(
            orjson.dumps(delta_data(changes, book.checksum() if checksum else None))
        )

    def snapshot(self, checksum: bool) -> Snapshot:
        book = self.book
        ts = self.last_publish
        position = Position(self.epoch, self.seq)
        if book is None:
            return Snapshot(position, ts, self.value)
        data = delta_data(book.snapshot(), book.checksum() if checksum else None)
        return Snapshot(position, ts, orjson.Fragment(orjson.dumps(data)))


class MemoryBroker:
    """Numbers messages per (channel, topic), keeps their history and queues them for the
    relay."""

    def __init__(
        self,
        policies: Mapping[str, HistoryPolicy] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        max_queued: int = QUEUE_MESSAGES,
    ) -> None:
        self._policies = dict(policies or {})
        self._clock = clock
        self._max_queued = max_queued
        # Messages handed to the queue and not yet through the relay.
        self._queued = 0
        # Every topic with state, least recently published first: expiry pops from the
        # front, so it costs nothing per publish beyond a move_to_end.
        self._topics: OrderedDict[tuple[str, str], TopicState] = OrderedDict()
        # Topics with a non-empty history, in the same order: their history expires first.
        self._with_history: OrderedDict[tuple[str, str], TopicState] = OrderedDict()
        self._queue: asyncio.Queue[Sequence[Update] | Resync | None] | None = None
        # Numbering and queueing happen under one lock: when the queue is full, a later
        # publisher must not overtake an earlier one and deliver seq N+1 before N.
        self._order = asyncio.Lock()
        # The one publisher (it holds _order) waiting for room, if any: woken when the
        # relay is done with a batch, and when the broker stops.
        self._room: asyncio.Future[None] | None = None
        self._nodes: dict[str, bytes] = {}

    @property
    def connected(self) -> bool:
        return self._queue is not None

    async def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_BATCHES)
        self._queued = 0

    async def stop(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # ends the relay loop's iteration
        self._wake()  # a publisher waiting for room is refused, not left waiting forever

    def policy(self, channel: str) -> HistoryPolicy:
        return self._policies.get(channel, DEFAULT_POLICY)

    async def publish(self, messages: Sequence[Message]) -> int:
        async with self._order:
            queue = self._queue
            if queue is None:
                raise ConnectionError("the memory broker is not started")
            if not self._has_room(queue):
                await self._wait_for_room(queue)
            now = self._clock()
            self._expire(now)
            topics = self._topics
            with_history = self._with_history
            batch = []
            for message in messages:
                key = (message.channel, message.topic)
                state = topics.get(key)
                policy = self.policy(message.channel)
                if state is None:
                    state = topics[key] = TopicState(new_epoch(), policy)
                else:
                    topics.move_to_end(key)
                state.seq += 1
                state.last_publish = now
                data = message.data
                if policy.mode != "stream":
                    data = state.apply(data, policy.checksum)
                update = Update(message.channel, message.topic, state.seq, now, data, state.epoch)
                batch.append(update)
                if state.history.maxlen:
                    state.history.append(update)
                    with_history[key] = state
                    with_history.move_to_end(key)
            queue.put_nowait(batch)
            self._queued += len(batch)
        return len(batch)

    def _expire(self, now: float) -> None:
        """Forget histories older than their channel's history_ttl and topics idle past
        their topic_ttl. Oldest first, so each call stops at the first live one."""
        with_history = self._with_history
        while with_history:
            key, state = next(iter(with_history.items()))
            if now - state.last_publish < self.policy(key[0]).ttl:
                break
            state.history.clear()
            del with_history[key]
        topics = self._topics
        while topics:
            key, state = next(iter(topics.items()))
            if now - state.last_publish < self.policy(key[0]).topic_ttl:
                break
            del topics[key]
            with_history.pop(key, None)

    async def _wait_for_room(self, queue: asyncio.Queue[Sequence[Update] | Resync | None]) -> None:
        """Backpressure on publishers while the relay catches up; ConnectionError if the
        broker stops meanwhile (the relay is gone: the batch would never be delivered)."""
        while not self._has_room(queue):
            waiter = self._room = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._room = None
            if self._queue is not queue:
                raise ConnectionError("the memory broker stopped")

    def _has_room(self, queue: asyncio.Queue[Sequence[Update] | Resync | None]) -> bool:
        return not queue.full() and self._queued < self._max_queued

    def _wake(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    async def batches(self) -> AsyncIterator[Sequence[Update] | Resync]:
        queue = self._queue
        if queue is None:
            raise ConnectionError("the memory broker is not started")
        while True:
            batch = await queue.get()
            self._wake()  # room in the queue (the message bound is checked again)
            if batch is None:
                return
            try:
                yield batch
            finally:
                # The relay is done with it (it asks for the next one): room for more.
                if not isinstance(batch, Resync):
                    self._queued -= len(batch)
                self._wake()

    # -- positions and history ----------------------------------------------------------------

    def _state(self, channel: str, topic: str) -> TopicState | None:
        now = self._clock()
        self._expire(now)
        return self._topics.get((channel, topic))

    async def positions(self, channel: str, topics: Sequence[str]) -> dict[str, Position]:
        found = {}
        for topic in topics:
            state = self._state(channel, topic)
            found[topic] = NO_POSITION if state is None else Position(state.epoch, state.seq)
        return found

    async def history(self, channel: str, topic: str, since: Position, limit: int) -> History:
        state = self._state(channel, topic)
        if state is None:
            return History(NO_POSITION, recent((), NO_POSITION, since, limit))
        position = Position(state.epoch, state.seq)
        return History(position, recent(state.history, position, since, limit))

    async def snapshot(self, channel: str, topic: str) -> Snapshot | None:
        policy = self.policy(channel)
        state = self._state(channel, topic)
        if state is None or policy.mode == "stream":
            return None
        return state.snapshot(policy.checksum)

    def stats(self) -> BrokerStats:
        return BrokerStats()

    async def put_node(self, node: str, record: bytes, ttl: float) -> None:
        self._nodes[node] = record  # one process: its own record is the whole cluster

    async def nodes(self) -> Mapping[str, bytes]:
        return dict(self._nodes)
