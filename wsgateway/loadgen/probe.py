"""CPU and RSS figures: another process's (from /proc), the machine's and our own."""

from __future__ import annotations

import asyncio
import os
import resource


class ProcessProbe:
    """CPU seconds and RSS of another process, from /proc (Linux), so stdlib only."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime, all threads

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * self.page


def busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy (from /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """The server's RSS, sampled every 0.1 s while traffic runs, warm-up included: a slow
    consumer's backlog may peak and be dropped before the measured window starts."""

    def __init__(self, probe: ProcessProbe | None) -> None:
        self.probe = probe
        self.peak = self.last = 0

    async def watch(self) -> None:
        if self.probe is None:
            return
        while True:
            self.last = self.probe.rss_bytes()
            self.peak = max(self.peak, self.last)
            await asyncio.sleep(0.1)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
