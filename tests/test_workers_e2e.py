"""``wsgateway serve --workers 2`` for real: one node of two processes sharing a port, with a
real redis-server, real WebSocket clients (python-websockets) and a real Prometheus.

Each test starts the command in a child process and kills whatever is left of it (the
supervisor and every worker it started) even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from .conftest import recv_json, request
from .processes import alive
from .redis_server import free_port
from .test_grafana_e2e import (
    PrometheusAPI,
    check_everything,
    panel_queries,
    run_prometheus,
    steady_traffic,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 40
LISTENING = re.compile(
    r"listening on (http://127\.0\.0\.1:(\d+)) with 2 workers \(pids (\d+), (\d+);"
)


@dataclass
class Node:
    """A running ``wsgateway serve --workers 2``."""

    process: subprocess.Popen[str]
    url: str
    port: int
    pids: list[int]
    stderr: Path
    restarted: list[int] = field(default_factory=list)

    def ws_url(self, channel: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{channel}{query}"

    async def publish(self, channel: str, topic: str, data: Any) -> None:
        body = {"channel": channel, "topic": topic, "data": data}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + "/api/publish", json=body) as response,
        ):
            assert response.status == 200, await response.text()

    async def get(self, path: str) -> tuple[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as response:
            assert response.status == 200, path
            text = await response.text()
            return text, (await response.json()) if path.startswith("/api/") else None

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


StartNode = Callable[[], Awaitable[Node]]


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line the command prints, or "" when it prints none in time."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


def children_of(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in text.split()]
    return []


@pytest.fixture
def start_node(redis_server: Any, tmp_path: Path) -> Iterator[StartNode]:
    nodes: list[Node] = []

    def launch() -> Node:
        stderr = tmp_path / f"node-{len(nodes)}.log"
        with stderr.open("w") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wsgateway",
                    "serve",
                    "--workers",
                    "2",
                    "--port",
                    str(free_port()),
                    "--broker",
                    redis_server.url,
                ],
                cwd=ROOT,
                # SIGTERM drains: over 1 s here rather than the default 10.
                env={**os.environ, "PYTHONPATH": str(ROOT), "WSGATEWAY_DRAIN_SECONDS": "1"},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        node = Node(process, "", 0, [], stderr)
        nodes.append(node)
        line = read_line(process, 15.0)
        match = LISTENING.search(line)
        assert match, f"no listening line: {line!r}\n{node.log()}"
        node.url, node.port = match.group(1), int(match.group(2))
        node.pids = [int(match.group(3)), int(match.group(4))]
        return node

    async def start() -> Node:
        return await asyncio.to_thread(launch)

    yield start
    for node in nodes:  # whatever happened: nothing outlives the test
        workers = set(node.pids) | set(children_of(node.process.pid))
        if node.process.poll() is None:
            node.process.kill()
        node.process.wait()
        if node.process.stdout is not None:
            node.process.stdout.close()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def by_worker(text: str, name: str, **labels: str) -> dict[str, float]:
    """The value of each worker's series ``name{labels}`` in a text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                values[sample.labels["worker"]] = sample.value
    return values


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def subscribers(node: Node, count: int) -> AsyncIterator[list[Any]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            ws = await stack.enter_async_context(websockets.connect(node.ws_url("ticker")))
            reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
            assert reply["type"] == "subscribed", reply
            clients.append(ws)
        yield clients


@pytest.mark.timeout(60)
async def test_two_workers_share_the_port_the_feed_and_the_figures(start_node: StartNode) -> None:
    node = await start_node()
    async with subscribers(node, CLIENTS) as clients:
        # The kernel spreads the connections (SO_REUSEPORT); whichever worker answers a
        # scrape reports both, and the node's totals.
        for _ in range(20):
            text, _ = await node.get("/metrics")
            active = by_worker(text, "wsgateway_connections_active", channel="ticker")
            assert set(active) == {"0", "1"} and sum(active.values()) == CLIENTS, active
            assert all(value > 0 for value in active.values()), active
            assert by_worker(text, "wsgateway_worker_up") == {"0": 1.0, "1": 1.0}
            _, view = await node.get("/api/ws/metrics")
            assert view["total_active_connections"] == CLIENTS, view
            assert view["workers"] == {"count": 2, "missing": []}

        # A publish reaches the clients of both workers.
        await node.publish("ticker", "BTC-USD", {"price": 1.5})
        for ws in clients:
            update = await recv_json(ws, timeout=10)
            assert (update["type"], update["data"]) == ("update", {"price": 1.5}), update

        # Both workers are in the cluster view, each with its own connections.
        async def both_nodes_counted() -> bool:
            _, view = await node.get("/api/ws/metrics")
            nodes = view["nodes"]
            return (
                sorted(n["pid"] for n in nodes) == sorted(node.pids)
                and sum(n["connections"] for n in nodes) == CLIENTS
            )

        await eventually(both_nodes_counted, 10, "both workers' records with the connections")
        _, view = await node.get("/api/ws/metrics")
        assert [n["id"] for n in view["nodes"]] == sorted(n["id"] for n in view["nodes"])
        assert {n["worker"] for n in view["nodes"]} == {0, 1}
        assert {n["address"] for n in view["nodes"]} == {f"127.0.0.1:{node.port}"}

        # SIGTERM: every worker drains (1012), every process is gone within seconds.
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1012
    code = await asyncio.to_thread(node.process.wait, 10)
    assert code == 0, node.log()
    assert time.monotonic() - started < 10
    assert not any(alive(pid) for pid in node.pids)


@pytest.mark.timeout(60)
async def test_a_killed_worker_is_restarted_and_serves_again(start_node: StartNode) -> None:
    node = await start_node()
    killed = node.pids[1]
    os.kill(killed, signal.SIGKILL)

    async def replaced() -> bool:
        workers = children_of(node.process.pid)
        return len(workers) == 2 and killed not in workers

    await eventually(replaced, 10, "a new worker 1")
    restarted = next(pid for pid in children_of(node.process.pid) if pid not in node.pids)

    async def back_in_the_figures() -> bool:
        _, view = await node.get("/api/ws/metrics")
        return view["workers"]["missing"] == [] and restarted in {n["pid"] for n in view["nodes"]}

    await eventually(back_in_the_figures, 10, "the new worker in the node's figures")
    async with subscribers(node, CLIENTS):
        text, _ = await node.get("/metrics")
        active = by_worker(text, "wsgateway_connections_active", channel="ticker")
        assert all(value > 0 for value in active.values()) and len(active) == 2, active
    assert f"worker 1 (pid {killed}) died (killed by SIGKILL)" in node.log()
    node.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.process.wait, 10) == 0


@pytest.mark.timeout(120)
async def test_dashboards_and_alert_rules_work_on_a_node_with_workers(
    start_node: StartNode,
) -> None:
    """The per-worker series (label ``worker``) break no panel query and no alert rule."""
    node = await start_node()
    assert len(panel_queries()) >= 40
    with tempfile.TemporaryDirectory(prefix="wsgateway-prometheus-") as tmp:
        async with (
            steady_traffic(node),  # type: ignore[arg-type]
            run_prometheus(Path(tmp), f"127.0.0.1:{node.port}") as prometheus,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            api = PrometheusAPI(session, prometheus)
            await api.wait_for_scrapes(timeout=30)
            failures = await check_everything(api, f"127.0.0.1:{node.port}")
            assert not failures, prometheus.failure(
                f"{len(failures)} failing queries:\n" + "\n".join(failures)
            )
            # Every series of the node is there, from both workers.
            answer = await api.query("count by (worker) (wsgateway_start_time_seconds)")
            workers = {r["metric"]["worker"] for r in answer["data"]["result"]}
            assert workers == {"0", "1"}, answer
