"""The in-memory broker: one process, no network; the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

from .base import Message, Update

# Batches waiting for the relay loop; past this, publishers wait (backpressure, not loss).
QUEUE_BATCHES = 1024


class MemoryBroker:
    """Numbers messages with a per-(channel, topic) counter and queues them for the relay."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sequences: dict[tuple[str, str], int] = {}
        self._queue: asyncio.Queue[Sequence[Update] | None] | None = None
        # Numbering and queueing happen under one lock: when the queue is full, a later
        # publisher must not overtake an earlier one and deliver seq N+1 before N.
        self._order = asyncio.Lock()
        # The one publisher (it holds _order) waiting for room in a full queue, if any:
        # woken when the relay takes a batch, and when the broker stops.
        self._room: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self._queue is not None

    async def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE_BATCHES)

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
            if queue.full():
                await self._wait_for_room(queue)
            queue.put_nowait(batch)
            # Numbers count only once queued: a refused batch leaves no gap.
            sequences.update(taken)
        return len(batch)

    async def _wait_for_room(self, queue: asyncio.Queue[Sequence[Update] | None]) -> None:
        """Backpressure on publishers while the relay catches up; ConnectionError if the
        broker stops meanwhile (the relay is gone: the batch would never be delivered)."""
        while queue.full():
            waiter = self._room = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._room = None
            if self._queue is not queue:
                raise ConnectionError("the memory broker stopped")

    def _wake(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    async def batches(self) -> AsyncIterator[Sequence[Update]]:
        queue = self._queue
        if queue is None:
            raise ConnectionError("the memory broker is not started")
        while True:
            batch = await queue.get()
            self._wake()
            if batch is None:
                return
            yield batch
