"""The scenarios: connect, publish, measure, and assemble one result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .client import Stats
from .config import Config
from .fleet import Fleet, open_fleet
from .probe import ProcessProbe, RedisCounters, RedisProbe, RssWatch
from .publisher import MAX_PENDING_POSTS, Publisher
from .result import Window, finish, percentiles, progress_line


async def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one scenario and return its result."""
    probe = ProcessProbe(cfg.server_pid, cfg.also_pids) if cfg.server_pid else None
    redis = RedisProbe(cfg.redis_port) if cfg.redis_port else None
    stats = Stats(book=cfg.payload == "book")
    result: dict[str, Any] = {
        "scenario": cfg.scenario,
        "url": cfg.url,
        "clients": cfg.clients,
        "slow_clients": round(cfg.clients * cfg.slow_fraction),
        "topics": cfg.topics,
        "subs_per_client": cfg.subs_per_client,
        "payload": cfg.payload,
    }
    if cfg.scenario in ("idle", "storm"):
        result.update(await run_connections(cfg, stats, probe, log))
        return result

    fleet = await open_fleet(cfg, stats, subscribe=True, log=log)
    result.update(
        connected=len(fleet.clients),
        connect_errors=len(fleet.errors),
        connect_seconds=round(fleet.seconds, 3),
        errors_sample=fleet.errors[:3],
    )
    log(f"connected {result['connected']} clients in {fleet.seconds:.2f}s")
    if not fleet.clients:
        result["error"] = "no client could connect and subscribe"
        return finish(result)
    rss = RssWatch(probe)
    loop = asyncio.get_running_loop()

    async def phase(name: str, seconds: float) -> None:
        begin = last = Window(stats, probe)
        # The small margin keeps a sleep that wakes a hair early from adding a last,
        # near-empty progress interval.
        while (elapsed := time.perf_counter() - begin.wall) < seconds - 0.01:
            await asyncio.sleep(min(cfg.progress, seconds - elapsed))
            now = Window(stats, probe)
            log(progress_line(name, now.wall - begin.wall, seconds, now.since(last), rss.last))
            last = now

    connector = aiohttp.TCPConnector(limit=MAX_PENDING_POSTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        publisher = Publisher(cfg, session, fleet.fanout)
        job = publisher.burst(stats) if cfg.scenario == "burst" else publisher.paced()
        tasks = [loop.create_task(job), loop.create_task(rss.watch())]
        try:
            await phase("warmup", cfg.warmup)
            redis_start = redis.read() if redis else None
            start = Window(stats, probe)
            stats.sampling = publisher.counting = True
            await phase("measure", cfg.duration)
            end = Window(stats, probe)
            stats.sampling = publisher.counting = False
            redis_end = redis.read() if redis else None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    result.update(end.since(start))
    result["latency_ms"] = percentiles(stats.samples)
    result.update(
        published=publisher.messages,
        publish_rate=round(publisher.messages / result["seconds"], 1),
        publish_errors=publisher.errors,
        stalls=publisher.stalls,
        skipped_ticks=publisher.skipped,
        lost_connections=stats.lost,
        unparsed_samples=stats.unparsed,
        close_codes={str(k): v for k, v in sorted(stats.close_codes.items())},
    )
    if redis_start is not None and redis_end is not None:
        result["redis"] = redis_work(redis_start, redis_end, result["seconds"], publisher.messages)
        # Redis is the server's, not other work on the machine
        result["background_cpu"] = round(
            max(0.0, result["background_cpu"] - result["redis"]["cpu"]), 3
        )
    if probe is not None:
        result["server_rss_bytes"] = probe.rss_bytes()
        result["server_rss_peak_bytes"] = max(rss.peak, result["server_rss_bytes"])
    for client in fleet.clients:
        client.abort()
    return finish(result)


def redis_work(
    start: RedisCounters, end: RedisCounters, seconds: float, messages: int
) -> dict[str, Any]:
    """What the gateway's Redis did in the measured window, per second and per message."""
    commands, calls = end.commands - start.commands, end.calls - start.calls
    cpu = end.cpu_seconds - start.cpu_seconds
    per_second = 1 / seconds if seconds > 0 else 0.0
    per_message = 1 / messages if messages else None
    return {
        "commands": commands,
        "calls": calls,
        "commands_per_s": round(commands * per_second, 1),
        "calls_per_s": round(calls * per_second, 1),
        "cpu": round(cpu * per_second, 3),
        # (the figures read by INFO itself are in: 2 commands per window)
        "commands_per_message": round(commands * per_message, 3) if per_message else None,
        "calls_per_message": round(calls * per_message, 3) if per_message else None,
        "cpu_us_per_message": round(cpu * per_message * 1e6, 2) if per_message else None,
    }


async def run_connections(
    cfg: Config, stats: Stats, probe: ProcessProbe | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """``idle`` (hold connections, RSS per connection) and ``storm`` (handshakes per second)."""
    result: dict[str, Any] = {}
    fleets: list[Fleet] = []
    if cfg.scenario == "idle":
        # A first slice pays the server's one-time costs (imports on first use, buffers),
        # so the per-connection figure is the slope, not the intercept.
        first = max(1, min(100, cfg.clients // 10))
        fleets.append(await open_fleet(replace_clients(cfg, first), stats, False, log))
        await asyncio.sleep(0.5)
        rss_before = probe.rss_bytes() if probe else 0
        start = Window(stats, probe)
        fleets.append(
            await open_fleet(replace_clients(cfg, cfg.clients - first), stats, False, log)
        )
        await asyncio.sleep(max(0.5, cfg.duration))  # let the server settle
        end = Window(stats, probe)
        added = len(fleets[1].clients)
        result["connect_seconds"] = round(fleets[1].seconds, 3)
        if probe is not None:
            rss_after = probe.rss_bytes()
            result.update(
                server_rss_before_bytes=rss_before,
                server_rss_bytes=rss_after,
                rss_per_connection_bytes=round((rss_after - rss_before) / added) if added else None,
            )
    else:
        start = Window(stats, probe)
        fleets.append(await open_fleet(cfg, stats, False, log))
        end = Window(stats, probe)
        accepted = len(fleets[0].clients)
        wall = end.wall - start.wall
        result["handshakes_per_s"] = round(accepted / wall, 1) if wall > 0 else 0.0
        if probe is not None:
            server_cpu = end.server_cpu - start.server_cpu
            result["server_cpu_us_per_handshake"] = (
                round(server_cpu / accepted * 1e6, 1) if accepted else None
            )
    errors = [e for fleet in fleets for e in fleet.errors]
    figures = end.since(start)
    for name in ("delivered", "deliveries_per_s", "server_cpu_us_per_delivery"):
        figures.pop(name, None)
    result.update(
        figures,
        connected=sum(len(f.clients) for f in fleets),
        connect_errors=len(errors),
        errors_sample=errors[:3],
        lost_connections=stats.lost,
    )
    log(f"{cfg.scenario}: {result['connected']} connections in {result['seconds']:.2f}s")
    for fleet in fleets:
        for client in fleet.clients:
            client.abort()
    return finish(result)


def replace_clients(cfg: Config, clients: int) -> Config:
    return dataclasses.replace(cfg, clients=clients)
