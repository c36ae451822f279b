"""Handshake rate and the memory a connection churn leaves behind (issue 7, the collector
tuning of ``wsgateway serve``).

Starts ``wsgateway serve`` (uvloop, admission limits raised), then:

1. storm: opens ``--storm`` clients (64 handshakes in flight) and holds them: handshakes/s
   with that many live connections, where full collections cost the most;
2. drops them, then churn: ``--churn`` more clients in rounds of 1,000, each round opened
   and dropped at once (handshakes/s again);
3. waits ``--idle`` seconds and reads the server's RSS.

Prints one JSON object: handshakes/s of both phases (and the server's CPU per handshake in
the storm) and the server's RSS (MiB) at start,
right after the churn and after the idle wait. Everything runs on 127.0.0.1.

    python benchmarks/churn.py --storm 0            # churn and RSS only
    python benchmarks/churn.py --churn 0 --idle 0   # storm handshakes/s only
    python benchmarks/churn.py --root /path/to/other/checkout
    python benchmarks/churn.py --default-gc         # without serve's collector tuning
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from wsgateway.loadgen.client import Stats
from wsgateway.loadgen.config import Config
from wsgateway.loadgen.fleet import open_fleet

ROOT = Path(__file__).resolve().parent.parent
ROUND = 1000
# serve, with tune_gc() made a no-op: the interpreter's default collector settings.
DEFAULT_GC = (
    "import sys, wsgateway.cli as cli, wsgateway.server as server; server.tune_gc = lambda: None; "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet(line: str) -> None:
    pass


def start_server(root: Path, port: int, default_gc: bool) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "WSGATEWAY_MAX_CONNECTIONS_PER_IP": "1000000",
        "WSGATEWAY_CONNECTIONS_PER_MINUTE": "1000000",
        "WSGATEWAY_MAX_CONNECTIONS": "1000000",
        "WSGATEWAY_LOG_LEVEL": "WARNING",
    }
    command = ["-c", DEFAULT_GC] if default_gc else ["-m", "wsgateway"]
    server = subprocess.Popen(
        [sys.executable, *command, "serve", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    if "listening" not in server.stdout.readline():
        server.kill()
        raise SystemExit("the server did not start")
    return server


async def measure(args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    server = start_server(args.root, port, args.default_gc)
    try:
        await asyncio.sleep(1.0)
        result: dict[str, object] = {"rss_start_mib": rss_mib(server.pid)}
        cfg = Config(
            url=f"ws://127.0.0.1:{port}/ws/ticker",
            publish_url=f"http://127.0.0.1:{port}/api/publish",
            clients=args.storm,
            concurrency=64,
        )
        stats = Stats()
        errors = 0
        if args.storm:
            started, cpu = time.perf_counter(), cpu_seconds(server.pid)
            fleet = await open_fleet(cfg, stats, True, quiet)
            result["storm_handshakes_per_s"] = round(
                len(fleet.clients) / (time.perf_counter() - started), 1
            )
            # CPU per handshake: less at the mercy of other work on a shared machine.
            result["storm_server_cpu_us_per_handshake"] = round(
                (cpu_seconds(server.pid) - cpu) / max(1, len(fleet.clients)) * 1e6, 1
            )
            for client in fleet.clients:
                client.abort()
            errors += len(fleet.errors)
        opened = 0
        started = time.perf_counter()
        for _ in range(args.churn // ROUND):
            fleet = await open_fleet(dataclasses.replace(cfg, clients=ROUND), stats, True, quiet)
            opened += len(fleet.clients)
            errors += len(fleet.errors)
            for client in fleet.clients:
                client.abort()
        if opened:
            result["churn_handshakes_per_s"] = round(opened / (time.perf_counter() - started), 1)
        await asyncio.sleep(1.0)
        result["rss_after_churn_mib"] = rss_mib(server.pid)
        await asyncio.sleep(args.idle)
        result["rss_after_idle_mib"] = rss_mib(server.pid)
        result["connect_errors"] = errors
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storm", type=int, default=8000, help="clients held in the storm")
    parser.add_argument("--churn", type=int, default=20_000, help="clients opened and dropped")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds idle before RSS")
    parser.add_argument("--default-gc", action="store_true", help="serve without tune_gc()")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="checkout whose wsgateway serves (default: this)"
    )
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(measure(args))))


if __name__ == "__main__":
    main()
