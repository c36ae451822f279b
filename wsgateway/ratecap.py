"""``max_rate``: at most one update frame per interval for one client's topic.

A client that subscribes with ``"max_rate": N`` on a ``last`` or ``book`` channel gets each
of those topics at most N times a second: the first update after a quiet interval goes out
at once; the ones that follow within the interval are merged (conflation.Pending) and sent
as one frame with ``from_seq`` when the interval ends, so the newest value is never more
than one interval late and nothing is lost (protocol.md, "max_rate").

The capped receivers of a channel are kept apart from its other subscribers
(:class:`RateCaps`), so the fan-out to everyone else pays nothing for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from .brokers.base import Update
from .conflation import Pending


class Cap:
    """The rate cap of one client on one topic."""

    __slots__ = ("interval", "next_at", "pending", "timer")

    def __init__(self, interval: float) -> None:
        #: the shortest time between two frames of the topic, in seconds
        self.interval = interval
        #: when the next frame may go out at once (the channel's clock)
        self.next_at = 0.0
        #: updates held back until ``next_at``, merged
        self.pending: Pending | None = None
        self.timer: asyncio.TimerHandle | None = None

    def due(self, now: float) -> bool:
        """May an update go out now (and if so, the interval starts again)?"""
        if self.pending is None and now >= self.next_at:
            self.next_at = now + self.interval
            return True
        return False

    def take(self, now: float) -> Pending | None:
        """What was held back, to be sent now; the interval starts again."""
        pending, self.pending = self.pending, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.next_at = now + self.interval
        return pending

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending = None


#: ``send(conn, pending)``: queue what a cap held back for its client
Send = Callable[[Any, Pending], None]


class RateCaps:
    """The receivers with a max_rate of one channel, by topic."""

    __slots__ = ("_book", "_by_topic", "_clock", "_merged", "_send")

    def __init__(
        self, clock: Callable[[], float], book: bool, send: Send, merged: Callable[[], None]
    ) -> None:
        self._clock = clock
        self._book = book
        self._send = send
        self._merged = merged  # counts one update folded into a held-back one
        self._by_topic: dict[str, dict[Any, Cap]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_topic)

    def __contains__(self, topic: object) -> bool:
        return topic in self._by_topic

    def __len__(self) -> int:
        return sum(len(caps) for caps in self._by_topic.values())

    def add(self, conn: Any, topic: str, interval: float) -> None:
        self._by_topic.setdefault(topic, {})[conn] = Cap(interval)

    def holds(self, conn: Any, topic: str) -> bool:
        caps = self._by_topic.get(topic)
        return caps is not None and conn in caps

    def holding_back(self, conn: Any, topic: str) -> bool:
        """True while an update of ``topic`` waits for ``conn``'s interval to end."""
        caps = self._by_topic.get(topic)
        cap = caps.get(conn) if caps else None
        return cap is not None and cap.pending is not None

    def remove(self, conn: Any, topic: str, release: bool = False) -> None:
        """Stop capping ``conn`` on ``topic``; ``release``: what was held back is sent
        first (the client goes on receiving the topic), else it is dropped with the cap."""
        caps = self._by_topic.get(topic)
        if caps is None:
            return
        cap = caps.pop(conn, None)
        if cap is not None:
            if release:
                self.release(conn, cap)
            cap.cancel()
        if not caps:
            del self._by_topic[topic]

    def offer(self, update: Update, frame: bytes) -> list[Any]:
        """Hand ``update`` to its topic's capped receivers: returns those whose interval is
        over (the frame goes to them now); the others hold it back, merged."""
        caps = self._by_topic.get(update.topic)
        if not caps:
            return []
        now = self._clock()
        return [conn for conn, cap in caps.items() if self._offer(conn, cap, update, frame, now)]

    def offer_to(self, conn: Any, update: Update, frame: bytes) -> bool:
        """:meth:`offer` for one receiver (a replayed or buffered update of a client joining
        the topic): True when the frame goes to it now."""
        return self._offer(conn, self._by_topic[update.topic][conn], update, frame, self._clock())

    def _offer(self, conn: Any, cap: Cap, update: Update, frame: bytes, now: float) -> bool:
        if cap.due(now):
            return True
        pending = cap.pending
        if pending is not None:
            if pending.merge(update, frame):
                self._merged()
                return False
            self.release(conn, cap)  # it does not follow on (a mended gap): sent first
        cap.pending = Pending(update, frame, self._book)
        cap.timer = asyncio.get_running_loop().call_later(
            max(0.0, cap.next_at - now), self.release, conn, cap
        )
        return False

    def release(self, conn: Any, cap: Cap) -> None:
        """Send what ``cap`` held back (its interval is over, or it must go out now)."""
        pending = cap.take(self._clock())
        if pending is not None:
            self._send(conn, pending)

    def release_all(self, topic: str) -> Iterator[Any]:
        """Send what every capped receiver of ``topic`` holds back (a reset follows);
        yields those receivers."""
        for conn, cap in self._by_topic.get(topic, {}).items():
            self.release(conn, cap)
            yield conn

    def cap(self, conn: Any, topic: str) -> Cap:
        """``conn``'s cap on ``topic`` (tests fire its timer by hand)."""
        return self._by_topic[topic][conn]
