"""Rate limiters. Pure: every call takes the current time, so tests drive a fake clock.

- :class:`TokenBucket` limits the messages one client sends (``messages_per_second``).
- :class:`SlidingWindow` limits the connections a channel admits (``connections_per_minute``).
- :class:`AddressCounter` counts open connections per client address (``max_connections_per_ip``).
- :class:`StrikeCounter` turns repeated rate-limit violations into a disconnect.
- :class:`LogThrottle` keeps an attacker from flooding the log with rejection lines.
"""

from __future__ import annotations

import math
from collections import deque


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def try_take(self, now: float, count: float = 1.0) -> bool:
        """Take ``count`` tokens if there are that many (else take none)."""
        self._refill(now)
        if self._tokens >= count:
            self._tokens -= count
            return True
        return False

    def wait_time(self, now: float, count: float = 1.0) -> float:
        """Seconds until ``count`` tokens are available (0 if they are)."""
        self._refill(now)
        return max(0.0, (count - self._tokens) / self._rate)


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds; keeps only events still inside it."""

    __slots__ = ("_events", "_limit", "_window")

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._events: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self._window
        events = self._events
        while events and events[0] <= horizon:
            events.popleft()

    def try_acquire(self, now: float) -> bool:
        """Record an event at ``now`` if the window has room."""
        self._prune(now)
        if len(self._events) >= self._limit:
            return False
        self._events.append(now)
        return True

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window has room again (at least 1)."""
        self._prune(now)
        if len(self._events) < self._limit:
            return 1
        return max(1, math.ceil(self._events[0] + self._window - now))

    def count(self, now: float) -> int:
        """Events inside the window at ``now``."""
        self._prune(now)
        return len(self._events)

    def __len__(self) -> int:
        """Entries held (pruned on every check): never more than the limit."""
        return len(self._events)


class AddressCounter:
    """Open connections per address; an address with none has no entry."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    def add(self, address: str) -> None:
        self._counts[address] = self._counts.get(address, 0) + 1

    def remove(self, address: str) -> None:
        left = self._counts.get(address, 0) - 1
        if left > 0:
            self._counts[address] = left
        else:
            self._counts.pop(address, None)

    def __len__(self) -> int:
        return len(self._counts)


class StrikeCounter:
    """Counts violations; ``limit`` of them within ``window`` seconds means "out"."""

    __slots__ = ("_window",)

    def __init__(self, limit: int, window: float) -> None:
        self._window = SlidingWindow(limit - 1, window)

    def strike(self, now: float) -> bool:
        """Record a violation; True when it is one too many."""
        return not self._window.try_acquire(now)


class LogThrottle:
    """At most one log line per key every ``interval`` seconds, reporting what it held back."""

    __slots__ = ("_held", "_interval", "_next")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """``None`` to stay quiet; else the number of lines suppressed since the last one."""
        if now < self._next.get(key, -math.inf):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self._interval
        return self._held.pop(key, 0)

    def note(self, key: str, now: float) -> str | None:
        """Like :meth:`allow`, as text for the log line: ``None`` (stay quiet), ``""``, or
        ``" (N more since the last line)"``."""
        held = self.allow(key, now)
        if held is None:
            return None
        return f" ({held} more since the last line)" if held else ""
