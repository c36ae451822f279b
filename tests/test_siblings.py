"""Workers read each other's registries over their private unix sockets."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from wsgateway.metrics import GatewayMetrics
from wsgateway.siblings import Siblings, WorkerRole
from wsgateway.workermetrics import WORKER_UP


def worker(index: int, count: int, directory: Path, sent: int) -> Siblings:
    registry = CollectorRegistry()
    GatewayMetrics(registry).for_channel("ticker").updates_sent.inc(sent)
    return Siblings(WorkerRole(index, count, str(directory)), registry, timeout=2.0)


@contextlib.asynccontextmanager
async def serving(siblings: Siblings) -> AsyncIterator[None]:
    lifetime = siblings.serve()
    await anext(lifetime)
    try:
        yield
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(lifetime)


def sent_by_worker(families: object) -> dict[str, float]:
    return {
        s.labels["worker"]: s.value
        for f in families  # type: ignore[attr-defined]
        for s in f.samples
        if s.name == "wsgateway_updates_sent_total"
    }


def up_by_worker(families: object) -> dict[str, float]:
    return {
        s.labels["worker"]: s.value
        for f in families  # type: ignore[attr-defined]
        for s in f.samples
        if s.name == WORKER_UP
    }


async def test_any_worker_answers_with_every_workers_figures(tmp_path: Path) -> None:
    workers = [worker(i, 3, tmp_path, sent=10 * (i + 1)) for i in range(3)]
    async with serving(workers[0]), serving(workers[1]), serving(workers[2]):
        for asked in workers:
            families = list((await asked.node_registry()).collect())
            assert sent_by_worker(families) == {"0": 10.0, "1": 20.0, "2": 30.0}
            assert up_by_worker(families) == {"0": 1.0, "1": 1.0, "2": 1.0}
    assert not any(tmp_path.iterdir()), "each socket is removed when its worker stops"  # noqa: ASYNC240


async def test_a_silent_sibling_is_left_out_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = worker(0, 2, tmp_path, sent=1)  # worker 1 does not serve
    (tmp_path / "worker-0.sock").write_bytes(b"")  # left behind by a crashed predecessor
    async with serving(first):
        with caplog.at_level(logging.WARNING, "wsgateway.siblings"):
            families = list((await first.node_registry()).collect())
            await first.node_registry()  # a second miss within the minute: not logged again
    assert sent_by_worker(families) == {"0": 1.0}
    assert up_by_worker(families) == {"0": 1.0, "1": 0.0}
    lines = [r.getMessage() for r in caplog.records if r.name == "wsgateway.siblings"]
    assert len(lines) == 1 and lines[0].startswith("worker 1's metrics are missing"), lines
