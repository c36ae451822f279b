"""Cheap scrapes (wsgateway/scrape.py): the same bytes as prometheus_client, fewer series.

The encoders must write exactly what prometheus_client's would for the same registry, under
every content type a scraper negotiates; the lean instruments must report the same series
as prometheus_client's, less ``_created``, and leave other registries' instruments alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import aiohttp
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wsgateway import scrape
from wsgateway.metrics import GatewayMetrics

from .conftest import RunningGateway

# What scrapers send: none (curl), Prometheus 2, Prometheus 3, text 1.0, OpenMetrics alone.
ACCEPTS = (
    "",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=dots",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=values",
)
AWKWARD_VALUES = (0.0, -0.0, 1.0, -3.5, 0.1, 1e-7, 999999.0, 1e6, 1234567.5, 2e20, -2e20,
                  math.inf, -math.inf, math.nan)  # fmt: skip


class Fixed(Collector):
    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def instruments(
    registry: CollectorRegistry,
    counter: type[prometheus_client.Counter],
    gauge: type[prometheus_client.Gauge],
    histogram: type[prometheus_client.Histogram],
) -> None:
    """The same instruments and the same events on ``registry``, from the given classes."""
    sent = counter(
        "t_sent", 'Frames "sent"\\ to\nclients', ["channel", "reason"], registry=registry
    )
    for channel in ("ticker", 'we"ird\\chan\nnel', "µ-ünïcode"):
        for reason in ("a", "b"):
            sent.labels(channel, reason).inc(3)
    counter("t_plain", "No labels", registry=registry).inc()
    level = gauge("t_level", "A gauge", ["slot"], registry=registry)
    for i, value in enumerate(AWKWARD_VALUES):
        level.labels(str(i)).set(value)
    gauge("t_lone", "No labels", registry=registry).set(7)
    gauge("t_live", "From a function", ["k"], registry=registry).labels("f").set_function(
        lambda: 4.5
    )
    latency = histogram(
        "t_latency_seconds", "Latency", ["channel"], buckets=(0.001, 0.5, 2.5), registry=registry
    )
    for value in (0.0001, 0.2, 0.3, 10.0):
        latency.labels("ticker").observe(value)
    latency.labels("idle")
    histogram("t_shift", "Negative buckets", buckets=(-1.0, 0.0, 1.0), registry=registry).observe(
        -0.5
    )


def lean_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    instruments(registry, scrape.Counter, scrape.Gauge, scrape.Histogram)
    stamped = GaugeMetricFamily("t_stamped", "With a timestamp", labels=["k"])
    stamped.add_metric(["v"], 2.0, timestamp=1_700_000_000.25)
    info = InfoMetricFamily("t_build", "Build", value={"version": "1.2"})
    unit = GaugeMetricFamily("t_size_bytes", "With a unit", value=5.0, unit="bytes")
    registry.register(Fixed(stamped, info, unit))
    return registry


@pytest.mark.parametrize("accept", ACCEPTS)
def test_our_encoder_writes_the_bytes_prometheus_client_writes(accept: str) -> None:
    registry = lean_registry()
    ours, content_type = scrape.choose_encoder(accept)
    stock, stock_type = exposition.choose_encoder(accept)
    assert content_type == stock_type
    assert ours(registry) == stock(registry)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_names_outside_the_legacy_set_go_to_prometheus_client(accept: str) -> None:
    registry = lean_registry()
    colon = GaugeMetricFamily("t:recorded", "A colon: legal in text, escaped in OpenMetrics")
    colon.add_metric([], 1.0)
    dotted = GaugeMetricFamily("t.dotted", "UTF-8 name", labels=["label.dot"])
    dotted.add_metric(["x"], 1.0)
    for extra in (Fixed(colon), Fixed(dotted)):
        registry.register(extra)
        ours, _ = scrape.choose_encoder(accept)
        stock, _ = exposition.choose_encoder(accept)
        assert ours(registry) == stock(registry)


def test_exemplars_go_to_prometheus_client() -> None:
    registry = CollectorRegistry()
    counter = prometheus_client.Counter("t_hits", "Hits", registry=registry)
    counter.inc(exemplar={"trace_id": "abc"})
    accept = "application/openmetrics-text;version=1.0.0"
    ours, _ = scrape.choose_encoder(accept)
    stock, _ = exposition.choose_encoder(accept)
    assert b'# {trace_id="abc"}' in ours(registry)
    assert ours(registry) == stock(registry)
    assert scrape.generate_text(registry) == exposition.generate_latest(registry)


def test_lean_instruments_report_the_stock_series_without_created() -> None:
    lean, stock = CollectorRegistry(), CollectorRegistry()
    instruments(lean, scrape.Counter, scrape.Gauge, scrape.Histogram)
    instruments(
        stock, prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram
    )

    def samples(registry: CollectorRegistry) -> list[tuple[str, ...]]:
        return [
            (f.name, f.type, f.documentation, s.name, repr(sorted(s.labels.items())), repr(s.value))
            for f in registry.collect()
            for s in f.samples
            if not s.name.endswith("_created")
        ]

    assert samples(lean) == samples(stock)
    assert not [s for f in lean.collect() for s in f.samples if s.name.endswith("_created")]


def test_the_gateway_exports_no_created_series_and_other_registries_keep_theirs() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry).for_channel("ticker")
    text = exposition.generate_latest(registry).decode()
    assert "_created" not in text
    lines = set(text.splitlines())
    # The pre-created children's series are all there, at 0 from the first scrape.
    assert 'wsgateway_updates_failed_total{channel="ticker",reason="slow_consumer"} 0.0' in lines
    assert 'wsgateway_delivery_latency_seconds_bucket{channel="ticker",le="+Inf"} 0.0' in lines
    assert 'wsgateway_delivery_latency_seconds_count{channel="ticker"} 0.0' in lines
    assert 'wsgateway_delivery_latency_seconds_sum{channel="ticker"} 0.0' in lines
    # An embedding application's own instruments keep prometheus_client's default.
    other = CollectorRegistry()
    prometheus_client.Counter("app_jobs", "Jobs", registry=other).inc()
    assert other.get_sample_value("app_jobs_created") is not None


def test_the_series_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrape, "_SERIES", {})
    monkeypatch.setattr(scrape, "_SERIES_MAX", 50)
    registry = CollectorRegistry()
    gauge = scrape.Gauge("t_many", "Many label values", ["id"], registry=registry)
    for i in range(500):
        gauge.labels(str(i)).set(i)
        if i % 37 == 0:
            assert scrape.generate_text(registry) == exposition.generate_latest(registry)
    assert len(scrape._SERIES) <= 50


async def test_a_live_scrape_has_no_created_series_in_either_format(gw: RunningGateway) -> None:
    """The scrape an operator's Prometheus takes: OpenMetrics (the default negotiation of
    Prometheus 2 and 3) and text, with the same series and no ``_created`` in either."""
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.http + "/metrics", headers={"Accept": ACCEPTS[2]}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            openmetrics = await response.text()
        async with session.get(gw.http + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
    assert "_created" not in openmetrics and "_created" not in text
    assert openmetrics.endswith("# EOF\n")
    om_series = {
        (s.name, tuple(sorted(s.labels.items())))
        for f in om_families(openmetrics)
        for s in f.samples
    }
    text_series = {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert om_series == text_series
    assert ("wsgateway_connections_total", (("channel", "ticker"),)) in text_series
