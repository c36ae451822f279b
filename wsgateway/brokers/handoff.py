"""The bounded hand-off from a broker's reader task to the relay loop.

The reader must never wait for the relay: while it waits, Redis buffers the pub/sub stream
for this process and disconnects it past ``client-output-buffer-limit pubsub``. So when the
relay is paused (a lagging client, Channel.pace) and the hand-off is full, a batch is
dropped, never silently: the relay is owed a :data:`RESYNC`, which is handed over before
the next batch that fits, and the relay then repairs its topics from the history.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from .base import RESYNC, Resync, Update

Item = Sequence[Update] | Resync | None


class Handoff:
    """A queue of update batches bounded in batches and in messages."""

    def __init__(self, max_batches: int, max_messages: int) -> None:
        self._max_batches = max_batches
        self._max_messages = max_messages
        self._items: deque[Item] = deque()
        self._messages = 0
        # Batches were dropped (or the subscription was rebuilt): RESYNC goes out next.
        self._resync_owed = False
        self._ready = asyncio.Event()
        #: batches dropped because the relay did not keep up
        self.dropped = 0

    def put(self, batch: Sequence[Update]) -> bool:
        """Queue ``batch``; False when it was dropped (full: a RESYNC is owed)."""
        if (
            len(self._items) >= self._max_batches
            or self._messages + len(batch) > self._max_messages
        ) and self._items:  # an empty queue takes any batch: a huge one cannot block forever
            self._resync_owed = True
            self.dropped += 1
            return False
        self._pay_resync()
        self._items.append(batch)
        self._messages += len(batch)
        self._ready.set()
        return True

    def resync(self) -> None:
        """Owe the relay a RESYNC (live delivery may have missed updates)."""
        self._resync_owed = True
        self._pay_resync()  # a marker, not a batch: it may go past the bound

    def close(self) -> None:
        """End the consumer's iteration once it has taken what is queued."""
        self._items.append(None)
        self._ready.set()

    def _pay_resync(self) -> None:
        if self._resync_owed:
            self._resync_owed = False
            self._items.append(RESYNC)
            self._ready.set()

    async def get(self) -> Item:
        """The next batch, RESYNC, or None once closed."""
        while not self._items:
            if self._resync_owed:  # dropped batches and nothing after them yet
                self._pay_resync()
                break
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is not None and not isinstance(item, Resync):
            self._messages -= len(item)
        return item
