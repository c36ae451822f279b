#!/usr/bin/env python3
"""Publish throughput into Redis (issue 8): messages/s the gateway's publish path accepts.

    python benchmarks/redis_publish.py                 # batches of 100, 1 and 16 in flight, 3 runs
    python benchmarks/redis_publish.py --inflight 1,4,16 --topics 10 --runs 5
    python benchmarks/redis_publish.py --profile prof.out   # cProfile of one run
    python benchmarks/redis_publish.py --mode book --checksum off   # order book messages

One process, pinned to the first core, does what ``POST /api/publish`` does after reading
the body: ``parse_publish`` (validation, data encoded once) and ``RedisBroker.publish`` (one
Lua script call per batch); it also runs the broker's pub/sub reader and drains
``batches()``, as the relay would, so the figure includes decoding its own deliveries. A
fresh redis-server runs on the second core. Each run: a warm-up, then ``--duration`` seconds
measured: messages accepted per second, the gateway's CPU and Redis's CPU per message,
and Redis calls per message (INFO commandstats, the script's own calls included). No HTTP:
this is the broker's ceiling, not the endpoint's.

``--mode`` sets the channel's topic mode (issue 9): ``stream`` (history only, the default),
``last`` (each topic also keeps its latest value) or ``book`` (each message is a book delta
of 3 bids and 2 asks near the top of a ~200-level book, applied by publish.lua, with its
CRC32 unless ``--checksum off``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# --root DIR: measure another checkout's wsgateway (a before/after in one session)
if "--root" in sys.argv:
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
else:
    ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from redisproc import RedisProcess, redis_server  # noqa: E402

from wsgateway.brokers import HistoryPolicy  # noqa: E402
from wsgateway.brokers.redis import RedisBroker  # noqa: E402
from wsgateway.protocol import parse_publish  # noqa: E402

CHANNEL = "ticker"
POLICY = HistoryPolicy()  # the ticker channel's defaults: 100 kept, 300 s, a day
#: book messages: levels within this many 0.5 ticks of the top on each side
BOOK_DEPTH = 200


def book_data(rng: random.Random) -> dict[str, Any]:
    """A delta as an exchange sends it: a few levels near the top, some removed."""

    def level(base: float, sign: int) -> list[Any]:
        price = base + sign * 0.5 * int(rng.expovariate(0.05) % BOOK_DEPTH)
        return [price, 0 if rng.random() < 0.2 else round(rng.uniform(0.01, 5), 4)]

    return {
        "bids": [level(65000.0, -1) for _ in range(3)],
        "asks": [level(65000.5, 1) for _ in range(2)],
    }


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_run(
    redis: RedisProcess,
    batch: int,
    inflight: int,
    topics: int,
    warmup: float,
    duration: float,
    policy: HistoryPolicy = POLICY,
) -> dict[str, Any]:
    broker = RedisBroker(redis.url, {CHANNEL: policy})
    books = (CHANNEL,) if policy.mode == "book" else ()
    rng = random.Random(8)
    await broker.start()
    if not broker.connected:
        raise RuntimeError("the broker did not connect")
    delivered = 0

    async def relay() -> None:
        nonlocal delivered
        async for item in broker.batches():
            if isinstance(item, list | tuple):
                delivered += len(item)

    names = [f"T{i}" for i in range(topics)]
    pad = "x" * 60
    counting = False
    accepted = 0
    stop = False

    async def publisher(offset: int) -> None:
        nonlocal accepted
        n = offset
        while not stop:
            stamp = {"t": time.time(), "pad": pad}
            document = {
                "messages": [
                    {
                        "channel": CHANNEL,
                        "topic": names[(n + i) % topics],
                        "data": book_data(rng) if books else stamp,
                    }
                    for i in range(batch)
                ]
            }
            n += batch
            done = await broker.publish(parse_publish(document, (CHANNEL,), books))
            if counting:
                accepted += done

    reader = asyncio.create_task(relay())
    tasks = [asyncio.create_task(publisher(i)) for i in range(inflight)]
    try:
        await asyncio.sleep(warmup)
        counting = True
        wall, cpu, before = time.perf_counter(), own_cpu(), redis.figures()
        await asyncio.sleep(duration)
        counting = False
        wall, cpu = time.perf_counter() - wall, own_cpu() - cpu
        redis_work = redis.figures().since(before)
    finally:
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.2)  # the last deliveries
        await broker.stop()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return {
        "messages_per_s": accepted / wall,
        "gateway_cpu": cpu / wall,
        "gateway_us_per_message": cpu / accepted * 1e6,
        "redis_cpu": float(redis_work["cpu_seconds"]) / wall,  # type: ignore[arg-type]
        "redis_us_per_message": float(redis_work["cpu_seconds"]) / accepted * 1e6,  # type: ignore[arg-type]
        "redis_calls_per_message": int(redis_work["calls"]) / accepted,  # type: ignore[call-overload]
        "redis_by_command": redis_work["by_command"],
        "delivered": delivered,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--inflight", default="1,16", help="publishes in flight, comma-separated")
    parser.add_argument("--topics", type=int, default=10, help="topics, round-robin")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--mode", choices=("stream", "last", "book"), default="stream")
    parser.add_argument("--checksum", choices=("on", "off"), default="on", help="book mode")
    parser.add_argument("--profile", type=Path, help="cProfile one run to this file")
    parser.add_argument("--root", type=Path, help="import wsgateway from this checkout")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    ours, theirs = cores[0], cores[-1]
    os.sched_setaffinity(0, {ours})
    inflights = [int(x) for x in args.inflight.split(",")]
    policy = replace(POLICY, mode=args.mode, checksum=args.checksum == "on")
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    rows = []
    with redis_server(core=theirs) as redis:
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(
                    one_run(
                        redis, args.batch, inflights[0], args.topics, 0.5, args.duration, policy
                    )
                )
            profiler.disable()
            profiler.dump_stats(args.profile)
            print(f"{result['messages_per_s']:,.0f} msg/s under cProfile; {args.profile}")
            return 0
        results: dict[int, list[dict[str, Any]]] = {n: [] for n in inflights}
        for run in range(args.runs):
            for n in inflights:  # interleaved, so that a noisy minute hits every row
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    r = runner.run(
                        one_run(
                            redis, args.batch, n, args.topics, args.warmup, args.duration, policy
                        )
                    )
                results[n].append(r)
                print(
                    f"run {run + 1} inflight {n}: {r['messages_per_s']:,.0f} msg/s, "
                    f"gateway {r['gateway_us_per_message']:.1f} µs/msg "
                    f"({r['gateway_cpu']:.0%}), redis {r['redis_us_per_message']:.1f} µs/msg "
                    f"({r['redis_cpu']:.0%}), {r['redis_calls_per_message']:.2f} calls/msg "
                    f"{r['redis_by_command']}",
                    file=sys.stderr,
                    flush=True,
                )
        for n in inflights:
            rs = results[n]

            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return float(statistics.median(r[key] for r in rs))

            rows.append(
                f"| {args.batch} | {n} | {med('messages_per_s'):,.0f} "
                f"({min(r['messages_per_s'] for r in rs):,.0f}-"
                f"{max(r['messages_per_s'] for r in rs):,.0f}) "
                f"| {med('gateway_us_per_message'):.1f} | {med('gateway_cpu'):.0%} "
                f"| {med('redis_us_per_message'):.1f} | {med('redis_cpu'):.0%} "
                f"| {med('redis_calls_per_message'):.2f} |"
            )
    load = os.getloadavg()
    import wsgateway

    print(
        f"wsgateway from {Path(wsgateway.__file__).parent.parent}; "
        f"Publish into Redis, mode {args.mode}"
        f"{f' (checksum {args.checksum})' if args.mode == 'book' else ''}, "
        f"{args.topics} topics, medians of {args.runs} runs (range); "
        f"load average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}\n\n"
        "| batch | in flight | messages/s | gateway µs/msg | gateway CPU "
        "| redis µs/msg | redis CPU | redis calls/msg |\n|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
