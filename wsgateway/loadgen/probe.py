"""CPU and RSS figures: another process's (from /proc), the machine's and our own."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from collections.abc import Sequence
from dataclasses import dataclass


class ProcessProbe:
    """CPU seconds and RSS of another process, from /proc (Linux), so stdlib only; with
    ``also``, of several summed (the workers of ``serve --workers N``)."""

    def __init__(self, pid: int, also: Sequence[int] = ()) -> None:
        self.pid = pid
        self.pids = (pid, *also)
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def cpu_seconds(self) -> float:
        ticks = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime, all threads
        return ticks / self.tick

    def rss_bytes(self) -> int:
        pages = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/statm", "rb") as f:
                pages += int(f.read().split()[1])
        return pages * self.page


@dataclass(frozen=True)
class RedisCounters:
    """A Redis server's cumulative counters at one instant (INFO)."""

    #: commands clients sent (total_commands_processed: EVALSHA, PUBLISH, HMGET ...)
    commands: int
    #: every command it executed, those a Lua script ran included (INFO commandstats)
    calls: int
    #: its CPU seconds (used_cpu_user + used_cpu_sys)
    cpu_seconds: float


class RedisProbe:
    """The counters of the Redis server behind a gateway, read with INFO over a short
    blocking connection (a millisecond, at the window's edges only; stdlib only)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)

    def _info(self) -> dict[str, str]:
        with socket.create_connection(self.address, timeout=5) as conn:
            conn.sendall(b"INFO all\r\n")
            data = b""
            while b"\r\n" not in data:  # the bulk reply's header: $<length>
                data += conn.recv(1 << 16) or b"\r\n"
            header = data.index(b"\r\n") + 2
            length = max(0, int(data[1 : header - 2] or 0))
            while len(data) < header + length:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        fields = {}
        for line in data.decode(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name] = value
        return fields

    def read(self) -> RedisCounters:
        info = self._info()
        calls = sum(
            int(value.split("calls=", 1)[1].split(",", 1)[0])
            for name, value in info.items()
            if name.startswith("cmdstat_")
        )
        return RedisCounters(
            commands=int(info["total_commands_processed"]),
            calls=calls,
            cpu_seconds=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        )


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
