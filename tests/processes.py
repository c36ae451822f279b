"""Gateway nodes and HAProxy as real processes for the end-to-end tests.

A node is ``python -m wsgateway serve --port 0``: it binds a free port itself and prints
it. HAProxy cannot report a port it picked, so its bind port is picked free and the start
retried when another process took it in between (as tests/redis_server.py does). Every
process is killed by its ``stop``/``kill``; tests use them as context managers so that a
failing test still ends them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
HAPROXY = "/usr/sbin/haproxy"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
START_ATTEMPTS = 5


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a zombie counts: it is not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any WSGATEWAY_* variable, plus ``extra``; the worktree's
    package first on the path (the venv has /work/main installed editable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


class GatewayNode:
    """One ``wsgateway serve`` process on 127.0.0.1; its output is kept in ``lines``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgateway", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(env),
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        try:
            self.port = self._read_port()
        except BaseException:
            self.kill()
            raise
        # Keep reading, so that a chatty log never fills the pipe and blocks the node.
        self._reader = threading.Thread(target=self._read_rest, daemon=True)
        self._reader.start()

    def _read_port(self) -> int:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        raise RuntimeError("wsgateway serve exited before listening:\n" + "".join(self.lines))

    def _read_rest(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        # The pipe ends once every process holding it is gone: with --workers, the workers
        # die just after the supervisor (PR_SET_PDEATHSIG). Closing it under the reader
        # thread would make that thread fail instead.
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(timeout=10)
        if self.process.stdout is not None and (reader is None or not reader.is_alive()):
            self.process.stdout.close()

    def __enter__(self) -> GatewayNode:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request with the standard library (independent of the gateway's aiohttp)."""
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, orjson.loads(error.read())


class HAProxy:
    """HAProxy running deploy/haproxy.cfg, with the addresses it reads from the environment."""

    def __init__(self, servers: tuple[str, str], directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        for _attempt in range(START_ATTEMPTS):
            port = free_port()
            env = clean_env(
                {
                    "WSLB_BIND": f"127.0.0.1:{port}",
                    "WSLB_NODE_A": servers[0],
                    "WSLB_NODE_B": servers[1],
                }
            )
            log = (directory / f"haproxy-{port}.log").open("w")
            self.process = subprocess.Popen(
                # -db: stay in the foreground, one process: the test owns it and kills it.
                [HAPROXY, "-db", "-f", str(HAPROXY_CFG)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            log.close()
            if self._wait_listening(port):
                self.port = port
                return
            self.kill()
        raise RuntimeError("haproxy did not start:\n" + self.log())

    def _wait_listening(self, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                return True
            except urllib.error.HTTPError:
                return True  # listening (503 while no node is up yet)
            except OSError:
                time.sleep(0.05)
        return False

    def log(self) -> str:
        return "".join(path.read_text() for path in sorted(self.directory.glob("haproxy-*.log")))

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
