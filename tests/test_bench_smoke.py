"""A short smoke run of the benchmark suite, so that it keeps working (no timing asserted)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, StartGateway

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"burst", "paced", "mix", "storm", "idle", "slow"}
SERVERS = {"wsgateway", "naive_aiohttp", "websockets", "picows"}


def quick_run(results: Path, *args: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """``benchmarks/run.py --quick ARGS``: its report, and its results file, once it
    exited 0."""
    run = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", *args, "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout, json.loads(results.read_text())


@pytest.mark.timeout(400)
def test_quick_run_measures_every_scenario_for_every_server(tmp_path: Path) -> None:
    report, document = quick_run(tmp_path / "quick.json", timeout=380)
    assert "### Goals (issue 3)" in report
    assert {case["scenario"] for case in document["cases"]} == SCENARIOS
    assert document["meta"]["skipped_servers"] == {}
    for case, by_server in document["medians"].items():
        assert set(by_server) >= SERVERS, case
        for server, figures in by_server.items():
            if case.startswith(("burst", "paced", "mix", "slow")):
                assert figures["delivered"] > 0, (case, server)
            if case.startswith("idle"):
                assert figures["connected"] == figures["clients"], (case, server)


@pytest.mark.timeout(60)
async def test_wsgateway_bench_drives_a_running_gateway(gw: RunningGateway) -> None:
    """`wsgateway bench` (the load generator) against a gateway the test started."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgateway", "bench",
        "--url", gw.ws_url("ticker"), "--clients", "20", "--scenario", "burst",
        "--batch", "5", "--warmup", "0.2", "--duration", "0.5", "--quiet",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 50)
    assert process.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["connected"] == 20 and result["delivered"] > 0
    assert result["publish_errors"] == 0 and result["lost_connections"] == 0


@pytest.mark.timeout(60)
async def test_wsgateway_bench_publishes_book_messages_to_a_book_channel(
    start_gateway: StartGateway,
) -> None:
    """`--payload book` (issue 9): a book channel accepts every message (it refuses anything
    else with 400) and the clients read the latency stamp back from the book frames."""
    gw = await start_gateway(mode="book")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgateway", "bench",
        "--url", gw.ws_url("ticker"), "--clients", "20", "--scenario", "burst",
        "--payload", "book", "--batch", "5", "--warmup", "0.2", "--duration", "0.5", "--quiet",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 50)
    assert process.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["payload"] == "book" and result["delivered"] > 0
    assert result["publish_errors"] == 0 and result["lost_connections"] == 0
    assert result["latency_ms"]["samples"] > 0 and result["unparsed_samples"] == 0


@pytest.mark.timeout(120)
def test_quick_run_in_book_mode(tmp_path: Path) -> None:
    """`run.py --mode book` sets wsgateway's ticker to book and publishes book messages."""
    report, document = quick_run(
        tmp_path / "quick-book.json",
        *("--servers", "wsgateway", "--scenarios", "burst,paced", "--mode", "book"),
        timeout=100,
    )
    assert "wsgateway's ticker in mode book" in report
    assert document["meta"]["mode"] == "book"
    for case, by_server in document["medians"].items():
        figures = by_server["wsgateway"]
        assert figures["delivered"] > 0 and figures["publish_errors"] == 0, case
        assert figures["latency_ms.samples"] > 0, case


@pytest.mark.timeout(200)
def test_quick_run_on_redis_sets_wsgateway_on_redis_beside_memory(tmp_path: Path) -> None:
    """`--broker redis --workers 2` starts its own redis-server and reports Redis's work."""
    report, document = quick_run(
        tmp_path / "quick-redis.json",
        *("--broker", "redis", "--workers", "2", "--servers", "wsgateway"),
        *("--scenarios", "burst,redis_work"),
        timeout=180,
    )
    assert "### Goals (issue 8)" in report
    assert document["meta"]["skipped_servers"] == {}
    medians = document["medians"]
    burst = next(v for k, v in medians.items() if k.startswith("burst"))
    assert set(burst) == {"wsgateway", "wsgateway-redis", "wsgateway-redis-w2"}
    assert all(figures["delivered"] > 0 for figures in burst.values())
    work = [v for k, v in medians.items() if k.startswith("redis_work")]
    assert len(work) == 2
    for by_server in work:
        assert set(by_server) == {"wsgateway-redis", "wsgateway-redis-w2"}
        for figures in by_server.values():
            # a paced publish is one script call: a handful of Redis commands per message
            assert 1 <= figures["redis.calls_per_message"] < 50
