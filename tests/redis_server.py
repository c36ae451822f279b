"""A real redis-server for the tests, started and stopped by them.

Each server gets its own directory (its RDB file lives there, so a restart "with the same
data" loads what it saved) and a free TCP port on 127.0.0.1. redis-server cannot bind port
0 and report the port, so a port is picked free and the start is retried when another
process took it in between.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_ATTEMPTS = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1; ``url`` stays the same across restarts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, empty: bool = False, timeout: float = 10.0) -> None:
        """Start the server (on the same port as before, if it ran already). ``empty``:
        without the data it saved."""
        if empty:
            (self.directory / "dump.rdb").unlink(missing_ok=True)
        for _attempt in range(START_ATTEMPTS):
            port = self.port or free_port()
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--dbfilename",
                    "dump.rdb",
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
            )
            if self._wait_ready(port, timeout):
                self.port = port
                return
            self.process.kill()
            self.process.wait()
            if self.port:  # the port it had is taken now: tests rely on the URL staying
                break
        raise RuntimeError(f"redis-server did not start (port {self.port or 'free'})")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # exited: the port was taken
            try:
                if self.command(port, "PING") == b"+PONG\r\n":
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def command(self, port: int | None, *words: str) -> bytes:
        """Send one command in the inline protocol; the raw reply (tests use it to poke
        the server without going through the code under test)."""
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=2) as conn:
            conn.sendall(" ".join(words).encode() + b"\r\n")
            return conn.recv(65536)

    def stop(self, *, save: bool = True) -> None:
        """Shut the server down, saving its data first unless ``save`` is False."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.command(None, "SHUTDOWN", "SAVE" if save else "NOSAVE")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop the server at once, as a crash would (nothing saved)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self, *, empty: bool = False, down_for: float = 0.0) -> None:
        """Stop (saving), stay down ``down_for`` seconds, start again; ``empty``: start
        without the saved data, as a server without persistence would."""
        self.stop(save=not empty)
        time.sleep(down_for)
        self.start(empty=empty)
