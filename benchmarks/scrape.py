"""What one scrape costs at N open connections (issue 7, "HTTP hardening").

Starts ``wsgateway serve`` (uvloop, admission limits raised, all clients on ``ticker``, each
subscribed to 5 topics), opens ``--clients`` WebSocket clients with the load generator's
fleet, then times ``--scrapes`` sequential GETs of ``/metrics`` and of ``/api/ws/metrics``
over one keep-alive connection and prints the median and p90 in milliseconds, with the same
figures at 0 clients for comparison. Everything runs on 127.0.0.1 and stops by itself.

    python benchmarks/scrape.py --clients 10000
    python benchmarks/scrape.py --clients 10000 --metrics-port 0   # the separate listener
    python benchmarks/scrape.py --clients 10000 --accept prometheus  # OpenMetrics, as scraped

Run it from the checkout to measure (the server is ``python -m wsgateway`` with this
directory first on the path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from wsgateway.loadgen.client import Stats
from wsgateway.loadgen.config import Config
from wsgateway.loadgen.fleet import open_fleet

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("/metrics", "/api/ws/metrics")
# What Prometheus 3 sends (scrape_protocols' default): prometheus_client picks OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    root: Path, port: int, metrics_port: int | None
) -> tuple[subprocess.Popen[str], int]:
    env = {
        **os.environ,
        "WSGATEWAY_MAX_CONNECTIONS_PER_IP": "1000000",
        "WSGATEWAY_CONNECTIONS_PER_MINUTE": "1000000",
        "WSGATEWAY_MAX_CONNECTIONS": "1000000",
        # The fleet opens clients faster than the default 1,000 handshakes per second.
        "WSGATEWAY_HANDSHAKES_PER_SECOND": "1000000",
        "WSGATEWAY_HANDSHAKE_BURST": "1000000",
        "WSGATEWAY_LOG_LEVEL": "WARNING",
    }
    if metrics_port is not None:
        env["WSGATEWAY_METRICS_PORT"] = str(metrics_port or free_port())
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgateway", "serve", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if "listening" not in line:
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    scrape_port = port
    if metrics_port is not None:
        found = re.search(r"metrics on http://[^:]+:(\d+)", line)
        if found is None:
            server.kill()
            raise SystemExit(f"no metrics listener in {line!r}")
        scrape_port = int(found.group(1))
    return server, scrape_port


async def time_scrapes(port: int, count: int, accept: str) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session:
        for path in PATHS:
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                url = f"http://127.0.0.1:{port}{path}"
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            figures[path] = {
                "median_ms": round(statistics.median(samples), 3),
                "p90_ms": round(samples[int(len(samples) * 0.9)], 3),
            }
    return figures


async def measure(
    root: Path, clients: int, scrapes: int, metrics_port: int | None, accept: str = ""
) -> dict[str, object]:
    port = free_port()
    server, scrape_port = start_server(root, port, metrics_port)
    try:
        idle = await time_scrapes(scrape_port, scrapes, accept)
        cfg = Config(
            url=f"ws://127.0.0.1:{port}/ws/ticker",
            publish_url=f"http://127.0.0.1:{port}/api/publish",
            clients=clients,
            topics=50,
            subs_per_client=5,
            concurrency=64,
        )
        fleet = await open_fleet(cfg, Stats(), True, lambda line: print(line, file=sys.stderr))
        if fleet.errors:
            print(f"{len(fleet.errors)} clients failed: {fleet.errors[:3]}", file=sys.stderr)
        loaded = await time_scrapes(scrape_port, scrapes, accept)
        for client in fleet.clients:
            client.abort()
        return {"clients": len(fleet.clients), "at_0": idle, f"at_{clients}": loaded}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="scrape a separate metrics listener (0: any free port)",
    )
    parser.add_argument(
        "--accept",
        default="",
        help="Accept header of the scrapes (default none: text 0.0.4); 'prometheus' sends what "
        "Prometheus 3 sends, which negotiates OpenMetrics",
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="checkout whose wsgateway serves (default: this)"
    )
    args = parser.parse_args()
    accept = PROMETHEUS_ACCEPT if args.accept == "prometheus" else args.accept
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(
        json.dumps(
            runner(measure(args.root, args.clients, args.scrapes, args.metrics_port, accept)),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
