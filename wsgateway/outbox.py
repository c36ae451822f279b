"""When a client is a slow consumer, and how much of a burst one loop turn may queue (pure).

A client is judged by what its kernel fails to take over time, not by how much one publisher
handed in at once:

- Its *pending* bytes are what waits for it in this process: its outbox plus what its
  transport still holds because the kernel would not take it.
- Over ``max_outbox_bytes`` it is *lagging*, until it is back under half of that
  (``resume``). Lagging for ``slow_consumer_grace`` seconds, it is a slow consumer: closed
  with 1013. The half-way mark means that to stop lagging a client must take
  ``max_outbox_bytes / 2`` within the grace (512 KiB in 2 s by default), not one byte.
- The relay stops handing the channel new updates while a lagging client is *on course*:
  draining fast enough to be back under ``resume`` before its grace ends, i.e. the bytes its
  kernel took since the last check, over the time since, are at least
  ``(pending - resume) / (grace - lagged_for)``. Publishers wait on the broker's bounded
  queue meanwhile, so a reader that is only behind because of a burst catches up and is
  never cut. A reader that stopped or trickles is not waited for: there is one relay for
  every channel, and waiting for it would pause the whole process's feed for its grace,
  again for every such reader (a few connections that stop reading one after another kept
  the feed at a fraction of its rate). The feed goes on; what it cannot take piles up to the
  hard cap, and it is cut then, or when its grace ends, whichever comes first.
- The rate is measured per check, over at least ``MIN_INTERVAL`` seconds (the channel
  checks every ``HOLD_RETRY_SECONDS``, 5 ms). It is the bytes the kernel *took* (handed to
  the transport minus what the transport still holds), not the change in pending bytes:
  frames the feed adds while the relay does not wait must not hide a reader that drains
  well, so one bad interval (a busy loop turn) is corrected at the next check. A new lagging
  client has no rate yet: it is waited for until its first measurement, one check later.
  That is the price of a reader that stops: one check interval of the feed (a few ms), once.
  The last interval only, not an average over the lag: a reader that drains fast for a
  moment and then stops is no longer waited for at the next check.
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
#: The shortest interval, in seconds, over which a lagging client's rate is measured: half
#: the channel's 5 ms check period, so that a client that starts lagging between two checks
#: is measured at the next one unless that is too soon to tell anything.
MIN_INTERVAL = 0.0025


@dataclass(frozen=True, slots=True)
class Course:
    """A lagging client's last measurement: when (``at``), how many bytes its kernel had
    taken by then (``taken``, a running total), and whether the relay waits for it."""

    at: float
    taken: int
    wait: bool = True  # a new lagging client is waited for until it is first measured


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

    def on_course(self, pending: int, taken: int, elapsed: float, lagged_for: float) -> bool:
        """Will a lagging client with ``pending`` bytes, whose kernel took ``taken`` bytes in
        the last ``elapsed`` seconds, be back under ``resume`` before its grace ends, at
        that rate?"""
        left = self.grace - lagged_for
        if left <= 0:
            return False  # its grace is over: it is cut, not waited for
        owed = pending - self.resume
        if owed <= 0:
            return True  # it has caught up
        if elapsed <= 0:
            return False
        # taken / elapsed >= owed / left, without dividing
        return taken * left >= owed * elapsed

    def follow(
        self, course: Course, pending: int, taken: int, lagging_since: float, now: float
    ) -> Course:
        """The next measurement of a lagging client (``taken``: the running total of bytes
        its kernel took). Within ``MIN_INTERVAL`` of the last one it is too soon to tell:
        the last decision stands."""
        elapsed = now - course.at
        if elapsed < MIN_INTERVAL:
            return course
        wait = self.on_course(pending, taken - course.taken, elapsed, now - lagging_since)
        return Course(now, taken, wait)
