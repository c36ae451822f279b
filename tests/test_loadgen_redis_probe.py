"""The load generator's view of the gateway's Redis: counters read with INFO at a window's
edges (probe.RedisProbe) and the figures made of them (scenario.redis_work)."""

from __future__ import annotations

import pytest

from tests.redis_server import RedisServer
from wsgateway.loadgen.probe import RedisCounters, RedisProbe
from wsgateway.loadgen.scenario import redis_work


def test_redis_work_is_per_second_and_per_published_message() -> None:
    start = RedisCounters(commands=100, calls=100, cpu_seconds=1.0)
    end = RedisCounters(commands=800, calls=800, cpu_seconds=1.5)
    work = redis_work(start, end, seconds=2.0, messages=100)
    assert work["commands"] == 700 and work["calls_per_s"] == 350.0
    assert work["calls_per_message"] == 7.0
    assert work["cpu"] == 0.25
    assert work["cpu_us_per_message"] == pytest.approx(5000.0)


def test_nothing_published_has_no_per_message_figure() -> None:
    same = RedisCounters(commands=1, calls=1, cpu_seconds=0.0)
    work = redis_work(same, same, seconds=1.0, messages=0)
    assert work["calls_per_message"] is None and work["cpu_us_per_message"] is None


def test_the_probe_counts_the_commands_a_script_runs(redis_server: RedisServer) -> None:
    probe = RedisProbe(redis_server.port)
    before = probe.read()
    # one EVAL that runs three commands itself
    script = "redis.call('SET', 'a', 1); redis.call('INCR', 'a'); return redis.call('GET', 'a')"
    assert b"2" in redis_server.command(None, "EVAL", f'"{script}"', "0")
    after = probe.read()
    # the EVAL, its three calls and the INFO of the first read, at least
    assert after.calls - before.calls >= 5
    assert after.commands - before.commands >= 5
    assert after.cpu_seconds >= before.cpu_seconds
