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
        # Messages handed to the queue and not yet through the relay, and the event that
        # wakes a publisher waiting for room.
        self._queued = 0
        self._room = asyncio.Event()
        self._sequences: dict[tuple[str, str], int] = {}
        self._queue: asyncio.Queue[Sequence[Update] | None] | None = None
        # Numbering and queueing happen under one lock: when the queue is full, a later
        # publisher must not overtake an earlier one and deliver seq N+1 before N.
        self._order = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._queue is not None

    async def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_BATCHES)
        self._queued = 0

    async def stop(self) -> None:
        queue, self._queue = self._queue, None
        self._room.set()  # a publisher waiting for room finds the broker stopped
        if queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # ends the relay loop's iteration

    async def publish(self, messages: Sequence[Message]) -> int:
        async with self._order:
            while self._queued >= self._max_queued and self._queue is not None:
                self._room.clear()
                await self._room.wait()
            queue = self._queue
            if queue is None:
                raise ConnectionError("the memory broker is not started")
            now = self._clock()
            sequences = self._sequences
            batch = []
            for message in messages:
                key = (message.channel, message.topic)
                seq = sequences.get(key, 0) + 1
                sequences[key] = seq
                batch.append(Update(message.channel, message.topic, seq, now, message.data))
            self._queued += len(batch)
            await queue.put(batch)
        return len(batch)

    async def batches(self) -> AsyncIterator[Sequence[Update]]:
        queue = self._queue
        if queue is None:
            raise ConnectionError("the memory broker is not started")
        while True:
            batch = await queue.get()
            if batch is None:
                return
            try:
                yield batch
            finally:
                # The relay is done with it (it asks for the next one): room for more.
                self._queued -= len(batch)
                if self._queued < self._max_queued:
                    self._room.set()
