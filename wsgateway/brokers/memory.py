"""The in-memory broker: one process, no network; the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

from .base import Message, Update

# Batches waiting for the relay loop; past this, publishers wait (backpressure, not loss).
QUEUE_BATCHES = 1024
# Messages waiting for (or in) the relay loop; past this, publishers wait too. The relay
# pauses while a client lags (Channel.pace), and 1024 batches of 10,000 messages would hold
# gigabytes meanwhile; 100,000 messages are tens of MB.
QUEUE_MESSAGES = 100_000


class MemoryBroker:
    """Numbers messages with a per-(channel, topic) counter and queues them for the relay."""

    def __init__(
        self, clock: Callable[[], float] = time.time, *, max_queued: int = QUEUE_MESSAGES
    ) -> None:
        self._clock = clock
        self._max_queued = max_queued
        # Messages handed to the queue and not yet through the relay.
        self._queued = 0
        self._sequences: dict[tuple[str, str], int] = {}
        self._queue: asyncio.Queue[Sequence[Update] | None] | None = None
        # Numbering and queueing happen under one lock: when the queue is full, a later
        # publisher must not overtake an earlier one and deliver seq N+1 before N.
        self._order = asyncio.Lock()
        # The one publisher (it holds _order) waiting for room, if any: woken when the
        # relay is done with a batch, and when the broker stops.
        self._room: asyncio.Future[None] | None = None

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

    async def publish(self, messages: Sequence[Message]) -> int:
        async with self._order:
            queue = self._queue
            if queue is None:
                raise ConnectionError("the memory broker is not started")
            now = self._clock()
            sequences = self._sequences
            taken: dict[tuple[str, str], int] = {}
            batch = []
            for message in messages:
                key = (message.channel, message.topic)
                seq = (taken.get(key) or sequences.get(key, 0)) + 1
                taken[key] = seq
                batch.append(Update(message.channel, message.topic, seq, now, message.data))
            if not self._has_room(queue):
                await self._wait_for_room(queue)
            queue.put_nowait(batch)
            self._queued += len(batch)
            # Numbers count only once queued: a refused batch leaves no gap.
            sequences.update(taken)
        return len(batch)

    async def _wait_for_room(self, queue: asyncio.Queue[Sequence[Update] | None]) -> None:
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

    def _has_room(self, queue: asyncio.Queue[Sequence[Update] | None]) -> bool:
        return not queue.full() and self._queued < self._max_queued

    def _wake(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    async def batches(self) -> AsyncIterator[Sequence[Update]]:
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
                self._queued -= len(batch)
                self._wake()
