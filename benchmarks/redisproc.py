"""A redis-server for the benchmarks: 127.0.0.1, a free port, its own temp dir, no
persistence, pinned to one core, stopped at the end; and the few figures read from it.

redis-server cannot bind port 0 and say which port it got, so a free port is picked and the
start retried if another process took it in between (as tests/redis_server.py does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    return Path(REDIS_SERVER).exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def command(port: int, *words: str) -> bytes:
    """One command in the inline protocol; the raw reply (enough for INFO and CONFIG)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(" ".join(words).encode() + b"\r\n")
        chunks = [conn.recv(1 << 20)]
        if chunks[0].startswith(b"$"):  # a bulk reply: read it whole
            length = int(chunks[0][1 : chunks[0].index(b"\r\n")])
            while sum(map(len, chunks)) < length + len(str(length)) + 5:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


@dataclass
class RedisFigures:
    """Cumulative counters of one redis-server, read at one instant."""

    commands: int  # total_commands_processed: commands clients sent (EVALSHA, PUBLISH ...)
    calls: int  # every command executed, those a Lua script ran included (commandstats)
    cpu_seconds: float  # the process's user + system CPU (/proc), all threads
    by_command: dict[str, int]

    def since(self, before: RedisFigures) -> dict[str, object]:
        return {
            "commands": self.commands - before.commands,
            "calls": self.calls - before.calls,
            "cpu_seconds": self.cpu_seconds - before.cpu_seconds,
            "by_command": {
                name: count - before.by_command.get(name, 0)
                for name, count in self.by_command.items()
                if count != before.by_command.get(name, 0)
            },
        }


@dataclass
class RedisProcess:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def figures(self) -> RedisFigures:
        stats = command(self.port, "INFO", "stats").decode()
        commandstats = command(self.port, "INFO", "commandstats").decode()
        total = int(stats.split("total_commands_processed:", 1)[1].split("\r\n", 1)[0])
        by_command = {}
        for line in commandstats.splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_") :].split(":", 1)
                by_command[name] = int(rest.split("calls=", 1)[1].split(",", 1)[0])
        fields = Path(f"/proc/{self.process.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return RedisFigures(total, sum(by_command.values()), cpu, by_command)

    def topic_seqs(self, channel: str, topics: list[str]) -> int:
        """The sum of the topics' latest seq: how many messages they were ever given."""
        total = 0
        for topic in topics:
            reply = command(self.port, "HGET", f"wsg:{{{channel}:{topic}}}:meta", "s")
            if reply.startswith(b"$") and not reply.startswith(b"$-1"):
                total += int(reply.split(b"\r\n")[1])
        return total


@contextlib.contextmanager
def redis_server(core: int | None = None) -> Iterator[RedisProcess]:
    """A fresh redis-server, stopped (and its directory removed) when the block ends."""
    directory = Path(tempfile.mkdtemp(prefix="wsgateway-bench-redis-"))
    process = None
    try:
        for _attempt in range(5):
            port = _free_port()
            process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(directory),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    "--maxmemory-policy",
                    "noeviction",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=None if core is None else (lambda: os.sched_setaffinity(0, {core})),
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(OSError):
                    if command(port, "PING") == b"+PONG\r\n":
                        break
                time.sleep(0.02)
            else:
                process.kill()
                process.wait()
                continue
            yield RedisProcess(process, port, directory)
            return
        raise RuntimeError("redis-server did not start")
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)
