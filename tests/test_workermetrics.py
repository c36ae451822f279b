"""The node's metrics from several workers: the wire format, the merge, the JSON totals."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from wsgateway.metrics import GatewayMetrics, StateCollector, to_json
from wsgateway.scrape import generate_text
from wsgateway.settings import Limits
from wsgateway.workermetrics import (
    WORKER_UP,
    MergedCollector,
    from_wire,
    merge,
    to_wire,
    with_worker,
)

CHANNELS = ("ticker", "user")


class Worker:
    """One worker's registry with some traffic, as a GatewayMetrics holds it."""

    def __init__(self, started: float, *, broker: bool = True, connections: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, clock=lambda: started)
        self.registry.register(
            StateCollector(
                lambda: [],
                {name: Limits() for name in CHANNELS},
                lambda: broker,
                lambda: connections,
            )
        )
        self.ticker = self.metrics.for_channel("ticker")

    def families(self, worker: str) -> list[Any]:
        return with_worker(self.registry.collect(), worker)


def test_the_wire_format_keeps_every_family_and_sample_including_infinities() -> None:
    worker = Worker(100.0)
    worker.ticker.updates_sent.inc(7)
    worker.ticker.delivery_latency.observe(0.003)
    families = from_wire(to_wire(worker.registry), "3")
    original = worker.families("3")
    assert [(f.name, f.type, f.documentation) for f in families] == [
        (f.name, f.type, f.documentation) for f in original
    ]
    # process_* figures (memory, CPU) move between two reads; the gateway's do not
    assert [(s.name, s.labels) for f in families for s in f.samples] == [
        (s.name, s.labels) for f in original for s in f.samples
    ]
    assert [s for f in families for s in f.samples if s.name.startswith("wsgateway_")] == [
        s for f in original for s in f.samples if s.name.startswith("wsgateway_")
    ]
    buckets = [s for f in families for s in f.samples if s.labels.get("le") == "+Inf"]
    assert buckets  # the +Inf bucket's label survives; a +Inf value too:
    inf = from_wire(b'[["x","gauge","doc","",[["x",{},"inf"],["x",{"a":"b"},"nan"]]]]', "0")
    assert inf[0].samples[0].value == math.inf and math.isnan(inf[0].samples[1].value)


@pytest.mark.parametrize("garbage", [b"", b"{}", b"[[1,2]]", b'[["x","nope","d","",[]]]'])
def test_the_wire_format_refuses_anything_else(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="not a worker's metrics"):
        from_wire(garbage, "0")


def test_merge_labels_every_series_with_its_worker_and_says_who_answered() -> None:
    first, second = Worker(100.0), Worker(200.0)
    first.ticker.updates_sent.inc(3)
    second.ticker.updates_sent.inc(4)
    merged = merge(
        {"0": first.families("0"), "1": from_wire(to_wire(second.registry), "1"), "2": None}
    )
    names = [family.name for family in merged]
    assert len(names) == len(set(names)), "each family once"
    assert names[-1] == WORKER_UP
    sent = {
        s.labels["worker"]: s.value
        for f in merged
        for s in f.samples
        if s.name == "wsgateway_updates_sent_total" and s.labels["channel"] == "ticker"
    }
    assert sent == {"0": 3.0, "1": 4.0}
    assert all("worker" in s.labels for f in merged for s in f.samples)
    up = {s.labels["worker"]: s.value for s in merged[-1].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}


def test_the_merged_exposition_is_valid_text_with_each_family_once() -> None:
    first, second = Worker(100.0), Worker(200.0)
    first.ticker.delivery_latency.observe(0.001)
    text = generate_text(
        MergedCollector(merge({"0": first.families("0"), "1": second.families("1")}))
    )
    families = list(text_string_to_metric_families(text.decode()))
    assert len({f.name for f in families}) == len(families)
    counts = [
        s
        for f in families
        for s in f.samples
        if s.name == "wsgateway_delivery_latency_seconds_count" and s.labels["channel"] == "ticker"
    ]
    assert sorted((s.labels["worker"], s.value) for s in counts) == [("0", 1.0), ("1", 0.0)]


def test_the_json_view_of_a_node_adds_up_its_workers() -> None:
    first = Worker(100.0, connections=2)
    second = Worker(160.0, connections=5)
    for worker, sent, rejected in ((first, 3, 1), (second, 4, 2)):
        worker.ticker.updates_sent.inc(sent)
        worker.ticker.connections.inc(sent)
        worker.ticker.rejected["capacity"].inc(rejected)
    # 99 fast deliveries in one worker, 99 slow ones in the other: the node's median lies
    # between, which neither worker's own figures show.
    for _ in range(99):
        first.ticker.delivery_latency.observe(0.0002)
        second.ticker.delivery_latency.observe(0.2)
    view = to_json(
        MergedCollector(merge({"0": first.families("0"), "1": second.families("1")})),
        CHANNELS,
        300.0,
    )
    ticker = view["managers"]["ticker"]
    assert view["total_messages_sent"] == 7
    assert ticker["total_connections"] == 7
    assert ticker["rejected"]["capacity"] == 3
    assert view["open_sockets"] == 7
    assert view["uptime_seconds"] == 200.0  # the oldest worker's
    assert view["broker_connected"] is True
    assert view["workers"] == {"count": 2, "missing": []}
    assert ticker["limits"]["max_connections"] == Limits().max_connections  # not doubled
    assert 0.1 < ticker["latency_seconds"]["p90"] <= 0.25
    alone = to_json(first.registry, CHANNELS, 300.0)["managers"]["ticker"]
    assert alone["latency_seconds"]["p90"] <= 0.00025


def test_the_broker_is_connected_for_the_node_only_when_it_is_in_every_worker() -> None:
    merged = merge({"0": Worker(1.0).families("0"), "1": Worker(1.0, broker=False).families("1")})
    assert to_json(MergedCollector(merged), CHANNELS, 2.0)["broker_connected"] is False


def test_a_worker_that_did_not_answer_is_named_in_the_view() -> None:
    merged = merge({"0": Worker(1.0).families("0"), "1": None, "2": Worker(1.0).families("2")})
    assert to_json(MergedCollector(merged), CHANNELS, 2.0)["workers"] == {
        "count": 3,
        "missing": ["1"],
    }


def test_a_single_process_view_has_no_workers_section() -> None:
    assert "workers" not in to_json(Worker(1.0).registry, CHANNELS, 2.0)
