"""``max_rate``: at most one update frame per interval for one client's topic.

A client that subscribes with ``"max_rate": N`` on a ``last`` or ``book`` channel gets each
of those topics at most N times a second: the first update after a quiet interval goes out
at once; the ones that follow within the interval are merged (conflation.Pending) and sent
as one frame with ``from_seq`` when the interval ends, so the newest value is never more
than one interval late and nothing is lost (protocol.md, "max_rate").
"""

from __future__ import annotations

import asyncio

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
