"""Unit tests for wsgateway.metrics: instruments on an explicit registry and the JSON view."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from wsgateway import __version__
from wsgateway.metrics import (
    ERROR_TYPES,
    FAIL_REASONS,
    FRAME_KINDS,
    LATENCY_BUCKETS,
    LIMIT_METRICS,
    REJECT_REASONS,
    ChannelState,
    GatewayMetrics,
    StateCollector,
    histogram_quantile,
    to_json,
)
from wsgateway.settings import LIMIT_NAMES, NON_NUMERIC_LIMITS, Limits

START = 1_000_000.0
CHANNELS = ("market", "ticker", "orderbook", "trades", "user")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStates:
    """What the channels report at scrape time; the test edits it."""

    def __init__(self) -> None:
        self.states: list[ChannelState] = []
        self.broker_connected = True

    def __call__(self) -> Iterable[ChannelState]:
        return list(self.states)


def build(
    channels: tuple[str, ...] = CHANNELS,
    limits: dict[str, Limits] | None = None,
) -> tuple[CollectorRegistry, GatewayMetrics, FakeClock, FakeStates]:
    registry = CollectorRegistry()
    clock = FakeClock(START)
    metrics = GatewayMetrics(registry, clock)
    states = FakeStates()
    if limits is None:
        limits = {name: Limits() for name in channels}
    registry.register(StateCollector(states, limits, lambda: states.broker_connected))
    return registry, metrics, clock, states


def family_names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


# -- an idle gateway --------------------------------------------------------------------------


def test_every_channel_present_with_no_traffic() -> None:
    registry, _metrics, _clock, _states = build()
    view = to_json(registry, CHANNELS, START + 10.0)
    assert list(view["managers"]) == list(CHANNELS)
    for name in CHANNELS:
        manager = view["managers"][name]
        assert manager["total_connections"] == 0
        assert manager["active_connections"] == 0
        assert manager["messages_sent"] == 0
        assert manager["messages_failed"] == 0
        assert manager["frames_sent"] == dict.fromkeys(FRAME_KINDS, 0)
        assert manager["errors"] == 0
        assert manager["last_error"] is None
        assert manager["success_rate"] is None
        assert manager["uptime"] == 10.0
        assert manager["rejected"] == dict.fromkeys(REJECT_REASONS, 0)
        assert manager["rate_limits"] == {
            "messages_per_second": 100,
            "connections_per_minute": 60,
            "handshakes_per_second": 1000,
        }
    assert view["total_active_connections"] == 0
    assert view["total_messages_sent"] == 0
    assert view["total_errors"] == 0
    assert view["overall_success_rate"] is None
    assert view["uptime_seconds"] == 10.0
    assert view["broker_connected"] is True


def test_channel_without_metrics_or_limits_still_appears() -> None:
    registry, _metrics, _clock, _states = build(channels=("ticker",))
    view = to_json(registry, ("ticker", "extra"), START)
    extra = view["managers"]["extra"]
    assert extra["total_connections"] == 0
    assert extra["success_rate"] is None
    assert extra["limits"] == {}
    assert extra["rate_limits"] == {
        "messages_per_second": None,
        "connections_per_minute": None,
        "handshakes_per_second": None,
    }


def test_success_rate_none_when_nothing_attempted_even_with_connections() -> None:
    registry, metrics, _clock, _states = build()
    metrics.for_channel("ticker").connections.inc(3)
    view = to_json(registry, CHANNELS, START)
    assert view["managers"]["ticker"]["total_connections"] == 3
    assert view["managers"]["ticker"]["success_rate"] is None
    assert view["overall_success_rate"] is None


# -- traffic ----------------------------------------------------------------------------------


def drive_traffic() -> tuple[CollectorRegistry, FakeClock, dict[str, Any]]:
    limits = {name: Limits() for name in CHANNELS}
    limits["ticker"] = Limits(messages_per_second=5, connections_per_minute=30, heartbeat=2.5)
    registry, metrics, clock, states = build(limits=limits)

    ticker = metrics.for_channel("ticker")
    ticker.connections.inc(20)
    ticker.updates_sent.inc(1247)
    ticker.failed["slow_consumer"].inc(2)
    ticker.failed["connection_lost"].inc(1)
    ticker.frames_sent["reply"].inc(6)
    ticker.frames_sent["error"].inc(2)
    ticker.rejected["rate_limited"].inc(4)
    ticker.published.inc(11)
    ticker.received.inc(9)
    ticker.slow_consumers.inc(2)
    clock.now = START + 100.0
    ticker.error("connection_reset")
    clock.now = START + 200.0
    ticker.error("slow_consumer")
    clock.now = START + 300.0
    ticker.error("connection_reset")  # the latest again

    trades = metrics.for_channel("trades")
    trades.connections.inc(5)
    trades.updates_sent.inc(100)
    clock.now = START + 250.0
    trades.error("heartbeat_timeout")

    states.states = [
        ChannelState("ticker", connections=15, subscriptions=40, topics=12, outbox_bytes=2048),
        ChannelState("trades", connections=4, subscriptions=4, topics=1, outbox_bytes=0),
    ]
    states.broker_connected = False
    view = to_json(registry, CHANNELS, START + 3600.5)
    return registry, clock, view


def test_channel_figures() -> None:
    _registry, _clock, view = drive_traffic()
    ticker = view["managers"]["ticker"]
    assert ticker["total_connections"] == 20
    assert ticker["active_connections"] == 15
    assert ticker["messages_sent"] == 1247
    assert ticker["messages_failed"] == 3
    assert ticker["frames_sent"] == {
        "reply": 6,
        "error": 2,
        "pong": 0,
        "reset": 0,
        "heartbeat": 0,
        "snapshot": 0,
    }
    assert ticker["errors"] == 3
    assert ticker["messages_published"] == 11
    assert ticker["messages_received"] == 9
    assert ticker["subscriptions"] == 40
    assert ticker["topics"] == 12
    assert ticker["outbox_bytes"] == 2048
    assert ticker["slow_consumers"] == 2
    assert ticker["rejected"] == {**dict.fromkeys(REJECT_REASONS, 0), "rate_limited": 4}
    assert ticker["success_rate"] == round(1247 / 1250, 6)
    assert ticker["success_rate"] == 0.9976
    assert ticker["uptime"] == 3600.5


def test_latency_buckets_are_the_cumulative_histogram() -> None:
    registry, metrics, _clock, _states = build()
    metrics.for_channel("trades")  # as the gateway does: every bucket exists from the start
    for seconds in (0.0002, 0.0002, 0.003, 9.0):
        metrics.delivery_latency.labels("ticker").observe(seconds)
    view = to_json(registry, CHANNELS, START + 1.0)
    buckets = view["managers"]["ticker"]["latency_buckets"]
    assert [bound for bound, _count in buckets] == [*LATENCY_BUCKETS, "+Inf"]
    counts = dict((str(bound), count) for bound, count in buckets)
    assert counts["0.0001"] == 0 and counts["0.00025"] == 2 and counts["0.0025"] == 2
    assert counts["0.005"] == 3 and counts["5.0"] == 3 and counts["+Inf"] == 4
    # The same quantiles as the view's own, from what a reader gets (the page does this).
    finite = [(float("inf") if b == "+Inf" else float(b), float(c)) for b, c in buckets]
    assert view["managers"]["ticker"]["latency_seconds"]["p50"] == pytest.approx(
        histogram_quantile(0.5, finite)
    )
    idle = view["managers"]["trades"]["latency_buckets"]
    assert len(idle) == len(LATENCY_BUCKETS) + 1 and all(count == 0 for _b, count in idle)
    assert view["managers"]["market"]["latency_buckets"] == []  # no series at all
    # JSON has no infinity: the document must survive a strict encoder.
    assert json.loads(json.dumps(view, allow_nan=False)) == view


def test_last_error_picks_the_latest_type() -> None:
    _registry, _clock, view = drive_traffic()
    assert view["managers"]["ticker"]["last_error"] == {
        "type": "connection_reset",
        "timestamp": START + 300.0,
    }
    assert view["managers"]["trades"]["last_error"] == {
        "type": "heartbeat_timeout",
        "timestamp": START + 250.0,
    }
    assert view["managers"]["market"]["last_error"] is None


def test_last_error_switches_type_when_another_comes_later() -> None:
    registry, metrics, clock, _states = build()
    channel = metrics.for_channel("user")
    clock.now = START + 1.0
    channel.error("send_failed")
    assert to_json(registry, CHANNELS, START + 2.0)["managers"]["user"]["last_error"] == {
        "type": "send_failed",
        "timestamp": START + 1.0,
    }
    clock.now = START + 5.0
    channel.error("internal")
    assert to_json(registry, CHANNELS, START + 6.0)["managers"]["user"]["last_error"] == {
        "type": "internal",
        "timestamp": START + 5.0,
    }
    assert to_json(registry, CHANNELS, START + 6.0)["managers"]["user"]["errors"] == 2


def test_sums_and_overall_success_rate() -> None:
    _registry, _clock, view = drive_traffic()
    assert view["total_active_connections"] == 19
    assert view["total_messages_sent"] == 1347
    assert view["total_errors"] == 4
    assert view["overall_success_rate"] == round(1347 / 1350, 6)
    trades = view["managers"]["trades"]
    assert trades["success_rate"] == 1.0
    assert trades["errors"] == 1
    assert view["managers"]["market"]["success_rate"] is None


def test_all_failed_gives_zero_success_rate() -> None:
    registry, metrics, _clock, _states = build()
    metrics.for_channel("market").failed["shutdown"].inc(7)
    view = to_json(registry, CHANNELS, START)
    assert view["managers"]["market"]["success_rate"] == 0.0
    assert view["overall_success_rate"] == 0.0
    assert view["total_errors"] == 0


def test_limits_and_rate_limits_come_from_the_limit_gauge() -> None:
    _registry, _clock, view = drive_traffic()
    ticker = view["managers"]["ticker"]
    assert ticker["rate_limits"] == {
        "messages_per_second": 5,
        "connections_per_minute": 30,
        "handshakes_per_second": 1000,
    }
    assert ticker["limits"] == {
        "connections_per_minute": 30,
        "handshakes_per_second": 1000,
        "handshake_burst": 1000,
        "messages_per_second": 5,
        "max_connections": 10000,
        "max_connections_per_ip": 100,
        "max_topics": 100,
        "max_message_size": 65536,
        "max_outbox_bytes": 1048576,
        "heartbeat": 2.5,
        "write_delay": 0.0,
        "slow_consumer_grace": 2.0,
        "history_size": 100,
        "history_ttl": 300.0,
        "topic_ttl": 86400.0,
        "max_replay": 1000,
        "max_book_levels": 1000,
        "position_heartbeat": 0,
    }
    assert ticker["mode"] == "last"
    assert isinstance(ticker["limits"]["max_topics"], int)
    assert view["managers"]["market"]["rate_limits"] == {
        "messages_per_second": 100,
        "connections_per_minute": 60,
        "handshakes_per_second": 1000,
    }
    assert view["managers"]["market"]["limits"]["heartbeat"] == 20.0


def test_uptime_from_start_time_gauge() -> None:
    _registry, _clock, view = drive_traffic()
    assert view["uptime_seconds"] == 3600.5
    for manager in view["managers"].values():
        assert manager["uptime"] == 3600.5


def test_uptime_never_negative() -> None:
    registry, _metrics, _clock, _states = build()
    assert to_json(registry, CHANNELS, START - 50.0)["uptime_seconds"] == 0.0


def test_broker_connected_from_registry() -> None:
    _registry, _clock, view = drive_traffic()
    assert view["broker_connected"] is False


def test_view_agrees_with_prometheus_exposition() -> None:
    registry, _clock, view = drive_traffic()
    text = generate_latest(registry).decode()
    lines = set(text.splitlines())
    assert 'wsgateway_updates_sent_total{channel="ticker"} 1247.0' in lines
    assert 'wsgateway_connections_total{channel="ticker"} 20.0' in lines
    assert 'wsgateway_connections_active{channel="ticker"} 15.0' in lines
    assert 'wsgateway_updates_failed_total{channel="ticker",reason="slow_consumer"} 2.0' in lines
    assert 'wsgateway_errors_total{channel="ticker",type="connection_reset"} 2.0' in lines
    assert 'wsgateway_limit_per_second{channel="ticker",setting="messages_per_second"} 5.0' in lines
    assert 'wsgateway_limit_per_second{channel="ticker",setting="connections_per_minute"} 0.5' in (
        lines
    )
    assert 'wsgateway_limit_seconds{channel="ticker",setting="heartbeat"} 2.5' in lines
    assert (
        'wsgateway_limit_bytes{channel="ticker",setting="max_outbox_bytes"} 1.048576e+06' in lines
    )
    assert 'wsgateway_limit_connections{channel="ticker",setting="max_connections"} 10000.0' in (
        lines
    )
    assert "wsgateway_broker_connected 0.0" in lines
    assert registry.get_sample_value("wsgateway_start_time_seconds") == START
    assert view["managers"]["ticker"]["messages_sent"] == 1247


def test_label_children_are_precreated_per_channel() -> None:
    registry, metrics, _clock, _states = build()
    metrics.for_channel("orderbook")
    text = generate_latest(registry).decode()
    for reason in FAIL_REASONS:
        assert (
            f'wsgateway_updates_failed_total{{channel="orderbook",reason="{reason}"}} 0.0' in text
        )
    for kind in ERROR_TYPES:
        assert f'wsgateway_errors_total{{channel="orderbook",type="{kind}"}} 0.0' in text


def test_unknown_error_kind_is_refused() -> None:
    _registry, metrics, _clock, _states = build()
    with pytest.raises(KeyError):
        metrics.for_channel("ticker").error("ValueError")


# -- registries -------------------------------------------------------------------------------


def test_two_gateways_on_separate_registries_do_not_collide() -> None:
    first = CollectorRegistry()
    second = CollectorRegistry()
    one = GatewayMetrics(first, FakeClock(10.0))
    two = GatewayMetrics(second, FakeClock(20.0))
    one.for_channel("ticker").updates_sent.inc(5)
    two.for_channel("ticker").updates_sent.inc(7)
    assert first.get_sample_value("wsgateway_updates_sent_total", {"channel": "ticker"}) == 5.0
    assert second.get_sample_value("wsgateway_updates_sent_total", {"channel": "ticker"}) == 7.0
    assert first.get_sample_value("wsgateway_start_time_seconds") == 10.0
    assert second.get_sample_value("wsgateway_start_time_seconds") == 20.0
    assert to_json(first, ("ticker",), 15.0)["total_messages_sent"] == 5
    assert to_json(second, ("ticker",), 25.0)["total_messages_sent"] == 7


def test_same_registry_twice_is_refused() -> None:
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        GatewayMetrics(registry)


def test_nothing_is_registered_on_the_global_registry() -> None:
    before = family_names(REGISTRY)
    registry, metrics, _clock, _states = build()
    metrics.for_channel("ticker").updates_sent.inc()
    to_json(registry, CHANNELS, START)
    after = family_names(REGISTRY)
    assert after == before
    assert not any(name.startswith("wsgateway") for name in after)
    assert REGISTRY.get_sample_value("wsgateway_start_time_seconds") is None
    assert "wsgateway_updates_sent" in family_names(registry)


# -- conventions ------------------------------------------------------------------------------


def test_every_limit_has_a_metric_by_its_unit() -> None:
    assert list(LIMIT_METRICS) == [n for n in LIMIT_NAMES if n not in NON_NUMERIC_LIMITS]
    limits = Limits(connections_per_minute=7, write_delay=0.003)
    registry, _metrics, _clock, _states = build(channels=("ticker",), limits={"ticker": limits})
    for setting, (name, factor) in LIMIT_METRICS.items():
        value = registry.get_sample_value(name, {"channel": "ticker", "setting": setting})
        assert value == getattr(limits, setting) * factor, setting
    view = to_json(registry, ("ticker",), START)["managers"]["ticker"]
    assert list(view["limits"]) == [n for n in LIMIT_NAMES if n not in NON_NUMERIC_LIMITS]
    assert view["limits"]["connections_per_minute"] == 7  # per second in Prometheus
    assert view["limits"]["write_delay"] == 0.003
    text = generate_latest(registry).decode()
    assert "wsgateway_limit{" not in text


def test_build_info_names_the_versions() -> None:
    registry, _metrics, _clock, _states = build()
    (sample,) = [
        s
        for family in registry.collect()
        for s in family.samples
        if s.name == "wsgateway_build_info"
    ]
    assert sample.value == 1
    assert sample.labels["version"] == __version__
    assert sample.labels["python"] == platform.python_version()
    assert sample.labels["aiohttp"] == aiohttp.__version__
