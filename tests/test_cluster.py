"""The cluster view: node records, their expiry (fake clock), a broker that fails."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from wsgateway import Settings
from wsgateway.brokers import MemoryBroker
from wsgateway.cluster import (
    NODE_INTERVAL,
    SILENT_INTERVALS,
    Cluster,
    NodeRecord,
    live_nodes,
    node_address,
    node_id,
)

from .conftest import StartGateway, until
from .fakes import FakeClock


def record(node: str, last_seen: float, **fields: object) -> NodeRecord:
    values: dict[str, object] = {
        "id": node,
        "address": "127.0.0.1:8080",
        "pid": 42,
        "worker": 0,
        "started": 0.0,
        "connections": 0,
        "sent": 0,
        "last_seen": last_seen,
        **fields,
    }
    return NodeRecord(**values)  # type: ignore[arg-type]


def test_a_record_survives_the_trip_through_bytes() -> None:
    original = record("a/1", 12.5, connections=3, sent=99, worker=1)
    assert NodeRecord.from_bytes(original.to_bytes()) == original


@pytest.mark.parametrize("garbage", [b"", b"[]", b'{"id": "x"}', b'{"id":"x","pid":"nope"}'])
def test_anything_but_a_record_is_refused(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="not a node record"):
        NodeRecord.from_bytes(garbage)


def test_a_node_silent_for_three_intervals_drops_out() -> None:
    now = 1000.0
    bound = now - SILENT_INTERVALS * NODE_INTERVAL
    records = {
        "b": record("b", now).to_bytes(),
        "a": record("a", bound).to_bytes(),  # exactly at the bound: still in
        "c": record("c", bound - 0.001).to_bytes(),  # just past it: gone
        "d": b"from another version",
    }
    assert [r.id for r in live_nodes(records, now)] == ["a", "b"]


class FailingBroker(MemoryBroker):
    """A broker whose node records cannot be written (Redis down)."""

    def __init__(self) -> None:
        super().__init__({})
        self.failing = True

    async def put_node(self, node: str, record: bytes, ttl: float) -> None:
        if self.failing:
            raise ConnectionError("redis is down")
        await super().put_node(node, record, ttl)


async def test_the_view_shows_the_records_read_and_forgets_them_when_they_go_silent() -> None:
    clock = FakeClock(1000.0)
    broker = MemoryBroker({})
    cluster = Cluster(broker, lambda: (5, 70), address="gw:1", worker=1, clock=clock)
    await broker.put_node("other/9", record("other/9", 1000.0).to_bytes(), 6.0)
    await cluster.refresh()
    clock.advance(1.5)
    view = cluster.view()
    assert [node["id"] for node in view] == sorted([cluster.id, "other/9"])
    mine = next(node for node in view if node["id"] == cluster.id)
    assert mine == {
        "id": node_id(),
        "address": "gw:1",
        "pid": os.getpid(),
        "worker": 1,
        "started": 1000.0,
        "connections": 5,
        "sent": 70,
        "last_seen": 1000.0,
        "uptime": 1.5,
    }
    clock.advance(SILENT_INTERVALS * NODE_INTERVAL - 1.5)
    assert len(cluster.view()) == 2
    clock.advance(0.01)
    assert cluster.view() == []


async def test_a_broker_that_fails_costs_a_throttled_log_line_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(1000.0)
    broker = FailingBroker()
    cluster = Cluster(broker, lambda: (0, 0), address="gw:1", clock=clock)
    with caplog.at_level(logging.WARNING, "wsgateway.cluster"):
        assert await cluster.refresh_or_log() is False
        clock.advance(NODE_INTERVAL)
        assert await cluster.refresh_or_log() is False
    lines = [r.getMessage() for r in caplog.records if r.name == "wsgateway.cluster"]
    assert lines == ["cannot exchange node records through the broker: redis is down"]
    assert cluster.view() == []
    broker.failing = False
    assert await cluster.refresh_or_log() is True
    assert [node["id"] for node in cluster.view()] == [cluster.id]


async def test_the_metrics_view_of_a_running_gateway_lists_its_node(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(Settings())
    await until(lambda: bool(gw.gateway.metrics_json()["nodes"]))
    nodes = (await gw.get_json("/api/ws/metrics"))["nodes"]
    assert [(n["id"], n["pid"], n["worker"]) for n in nodes] == [(node_id(), os.getpid(), 0)]


def test_a_node_on_every_interface_is_named_by_its_host() -> None:
    assert node_address("127.0.0.1", 8080) == "127.0.0.1:8080"
    assert node_address("0.0.0.0", 8080) == f"{socket.gethostname()}:8080"
    assert node_address("::1", 8080) == "[::1]:8080"
