"""Measure what compressed request bodies cost a running gateway (issue 7, item 4).

Starts ``python -m wsgateway serve`` (uvloop, a publish token set), then sends ``--attackers``
unauthenticated ``POST /api/publish`` requests at once, each with a ``--size`` byte body that
is deflate-compressed zeros (Content-Encoding: deflate), while a bystander WebSocket client
pings the gateway every 10 ms. Prints the attackers' answers, the gateway's CPU seconds over
the attack, and the bystander's ping round trips (median, max).

    python benchmarks/inflate_stall.py               # 3 x 0.5 MB
    python benchmarks/inflate_stall.py --runs 5      # medians of 5 runs

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import zlib

import psutil
import websockets

TOKEN = "t" * 32


def bomb(size: int) -> bytes:
    """About ``size`` bytes of deflate that inflate to ~1,000 times as many zeros."""
    # A zlib header, then one raw deflate block of 1 MiB of zeros (about 1 KB) repeated:
    # a full flush makes each copy stand alone. Cut off unfinished, as an attacker may.
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(b"\0" * 1_048_576) + raw.flush(zlib.Z_FULL_FLUSH)
    return (b"\x78\xda" + block * (size // len(block) + 1))[:size]


async def attack(port: int, body: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Encoding: deflate\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    try:
        status = await asyncio.wait_for(reader.readline(), 60)
        # Wait until the server is done with the connection (it reads the rest of the body).
        with contextlib.suppress(OSError):
            await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    return status.decode().strip()


async def bystander(port: int, stop: asyncio.Event, rtts: list[float]) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/ticker") as ws:
        while not stop.is_set():
            sent = time.perf_counter()
            await ws.send('{"type": "ping"}')
            json.loads(await ws.recv())
            rtts.append(time.perf_counter() - sent)
            await asyncio.sleep(0.01)


async def one_run(port: int, proc: psutil.Process, attackers: int, body: bytes) -> dict[str, float]:
    stop = asyncio.Event()
    rtts: list[float] = []
    pinger = asyncio.create_task(bystander(port, stop, rtts))
    await asyncio.sleep(0.5)
    rtts.clear()
    cpu = proc.cpu_times()
    started = time.perf_counter()
    answers = await asyncio.gather(*(attack(port, body) for _ in range(attackers)))
    elapsed = time.perf_counter() - started
    after = proc.cpu_times()
    await asyncio.sleep(0.3)  # a few more pings, so that a fast answer still has samples
    stop.set()
    await pinger
    spent = (after.user + after.system) - (cpu.user + cpu.system)
    print(f"  answers {sorted(set(answers))}", file=sys.stderr)
    return {
        "cpu_s": spent,
        "wall_s": elapsed,
        "ping_p50_ms": statistics.median(rtts) * 1000,
        "ping_max_ms": max(rtts) * 1000,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(port: int, pid: int, args: argparse.Namespace, body: bytes) -> None:
    proc = psutil.Process(pid)
    results = []
    for run in range(args.runs):
        result = await one_run(port, proc, args.attackers, body)
        print(f"run {run + 1}: " + json.dumps({k: round(v, 3) for k, v in result.items()}))
        results.append(result)
    medians = {k: round(statistics.median(r[k] for r in results), 3) for k in results[0]}
    print(f"{args.attackers} x {len(body)} bytes, median of {args.runs}: {json.dumps(medians)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=3)
    parser.add_argument("--size", type=int, default=500_000, help="compressed bytes each")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    body = bomb(args.size)
    port = free_port()
    env = {**os.environ, "WSGATEWAY_PUBLISH_TOKEN": TOKEN, "WSGATEWAY_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgateway", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "wsgateway listening on ..."
        asyncio.run(measure(port, server.pid, args, body))
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
