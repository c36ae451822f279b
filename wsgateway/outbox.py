"""When a client is a slow consumer, and how much of a burst one loop turn may queue (pure).

A client is judged by what its kernel fails to take over time, not by how much one publisher
handed in at once:

- Its *pending* bytes are what waits for it in this process: its outbox plus what its
  transport still holds because the kernel would not take it.
- Over ``max_outbox_bytes`` it is *lagging*, until it is back under half of that. The relay
  stops handing the channel new updates while a client lags (publishers wait on the
  broker's bounded queue instead), so a reader that is only behind because of a burst
  catches up and is never cut.
- Lagging for ``slow_consumer_grace`` seconds, it is a slow consumer: closed with 1013. The
  relay therefore waits at most that long for anyone. The half-way mark is what keeps a
  reader that trickles from pacing the whole feed at its own speed: to stop lagging it must
  take ``max_outbox_bytes / 2`` within the grace (512 KiB in 2 s by default), not one byte.
- A frame that would take it past ``HARD_CAP_FACTOR`` x ``max_outbox_bytes`` cuts it at once,
  so memory per client stays bounded whatever the timing (a single frame larger than that
  still goes to a client with nothing pending: it is not slow, the message is big).

The relay writes a burst in slices of at most ``max_outbox_bytes // SLICES`` bytes per
channel, flushing between them, so that one large batch never lands in an outbox in one turn.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: A frame that would take a client's pending bytes past this multiple of max_outbox_bytes
#: cuts it at once.
HARD_CAP_FACTOR = 2
#: A slice of a burst is at most max_outbox_bytes // SLICES bytes of frames per channel:
#: with the relay waiting once a client lags, pending stays under 1.25 x the limit.
SLICES = 4


class Verdict(enum.Enum):
    """What to do with a client, given its pending bytes and how long it has lagged."""

    KEEP = "keep"  # at or under the limit
    LAG = "lag"  # over the limit, within its grace: keep it, hold the relay back
    CUT = "cut"  # a slow consumer: close with 1013


@dataclass(frozen=True, slots=True)
class SlowConsumerRule:
    """The slow-consumer rule of one channel (see the module docstring)."""

    limit: int  # max_outbox_bytes
    grace: float  # slow_consumer_grace, seconds

    @property
    def hard_cap(self) -> int:
        """Pending bytes no frame may take a client past: it is cut instead, at once."""
        return HARD_CAP_FACTOR * self.limit

    def admits(self, pending: int, size: int) -> bool:
        """May a frame of ``size`` bytes join ``pending``? A client with nothing pending
        takes any frame."""
        return not pending or pending + size <= self.hard_cap

    @property
    def slice_bytes(self) -> int:
        """Bytes of frames the relay hands one channel before it flushes and yields."""
        return max(1, self.limit // SLICES)

    @property
    def resume(self) -> int:
        """Pending bytes a lagging client must get down to before it stops lagging."""
        return self.limit // 2

    def judge(self, pending: int, lagging_since: float | None, now: float) -> Verdict:
        """The verdict on a client with ``pending`` bytes that has lagged since
        ``lagging_since`` (None: it was not lagging)."""
        if lagging_since is None:
            return Verdict.KEEP if pending <= self.limit else Verdict.LAG
        if pending <= self.resume:
            return Verdict.KEEP
        if now - lagging_since >= self.grace:
            return Verdict.CUT
        return Verdict.LAG
