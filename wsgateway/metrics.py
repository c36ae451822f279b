"""Metrics: every instrument on one explicit registry, and the JSON view built from it.

Events are counters and histograms, bound per channel once (no label look-up on the hot
path). State (open connections, subscriptions, queued bytes, limits, broker state) is read
at scrape time by :class:`StateCollector`, so no gauge can drift from the truth. The JSON
view, :func:`to_json`, is a pure function of ``registry.collect()``: ``/metrics`` and
``/api/ws/metrics`` cannot disagree.

Labels come only from closed sets: ``channel`` (configured names) and the reason/type
words below. Never a topic, user, address or connection id.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .brokers.base import BrokerStats
from .scrape import Counter, Gauge, Histogram
from .settings import FLOAT_LIMITS, NON_NUMERIC_LIMITS, Limits
from .workermetrics import WORKER_LABEL, WORKER_UP

# Closed label sets. Pre-created at start so every series exists (at 0) from the first scrape.
REJECT_REASONS = (
    "rate_limited",
    "handshake_rate",
    "capacity",
    "ip_limit",
    "unauthorized",
    "forbidden_origin",
    "draining",
    "bad_handshake",
)
FAIL_REASONS = ("slow_consumer", "connection_lost", "shutdown")
#: The frames written to clients besides updates (``wsgateway_frames_sent_total{kind}``):
#: ``reply`` answers a request (subscribed, unsubscribed, the JSON pong), ``error`` refuses
#: one, ``pong`` is the WebSocket control frame answering a client's ping, ``reset`` says a
#: topic's continuity broke, ``heartbeat`` is the position report a client asked for with
#: ``"heartbeat"`` in a subscribe. Updates, replayed ones included, are
#: ``wsgateway_updates_sent_total``.
FRAME_KINDS = ("reply", "error", "pong", "reset", "heartbeat", "snapshot")
ERROR_TYPES = ("slow_consumer", "heartbeat_timeout", "connection_reset", "send_failed", "internal")
DISCONNECT_REASONS = (
    "client_closed",
    "slow_consumer",
    "heartbeat_timeout",
    "policy_violation",
    "binary_frame",
    "message_too_big",
    "invalid_frame",
    "token_expired",
    "connection_lost",
    "shutdown",
    "draining",
    "internal_error",
)
CLIENT_ERROR_CODES = (
    "bad_json",
    "bad_message",
    "unknown_type",
    "invalid_topic",
    "too_many_topics",
    "forbidden_topic",
    "rate_limited",
    "unavailable",
)
#: How a subscribe with "since" ended, per topic (resume.py).
RESUME_OUTCOMES = ("recovered", "not_recovered")
#: How the relay mended a topic whose live feed skipped updates (continuity.py).
REPAIR_OUTCOMES = ("filled", "reset")
RATE_LIMITS = ("handshakes_per_second", "connections_per_minute", "messages_per_second")
# Delivery latency, publish to socket write: sub-millisecond when healthy, seconds when not.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)  # fmt: skip
# Broadcast duration: tens of microseconds (few subscribers) to a second (a stalled loop).
DURATION_BUCKETS = (0.00005, *(b for b in LATENCY_BUCKETS if b <= 1.0))
# Update frame sizes: a ticker (~150 B) to an order-book snapshot (hundreds of KB).
SIZE_BUCKETS = (64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144, 1048576)
LATENCY_QUANTILES = (0.5, 0.9, 0.99)
#: The metric of each limit of settings.Limits, one per unit (Prometheus' base units), and
#: the factor from the setting's unit to the metric's (connections_per_minute is exported
#: per second). tests/test_metrics_view.py checks every limit has one.
LIMIT_METRICS: dict[str, tuple[str, float]] = {
    "connections_per_minute": ("wsgateway_limit_per_second", 1 / 60),
    "handshakes_per_second": ("wsgateway_limit_per_second", 1),
    "handshake_burst": ("wsgateway_limit_handshakes", 1),
    "messages_per_second": ("wsgateway_limit_per_second", 1),
    "max_connections": ("wsgateway_limit_connections", 1),
    "max_connections_per_ip": ("wsgateway_limit_connections", 1),
    "max_topics": ("wsgateway_limit_topics", 1),
    "max_message_size": ("wsgateway_limit_bytes", 1),
    "max_outbox_bytes": ("wsgateway_limit_bytes", 1),
    "heartbeat": ("wsgateway_limit_seconds", 1),
    "write_delay": ("wsgateway_limit_seconds", 1),
    "slow_consumer_grace": ("wsgateway_limit_seconds", 1),
    "history_size": ("wsgateway_limit_updates", 1),
    "history_ttl": ("wsgateway_limit_seconds", 1),
    "topic_ttl": ("wsgateway_limit_seconds", 1),
    "max_replay": ("wsgateway_limit_updates", 1),
    "max_book_levels": ("wsgateway_limit_levels", 1),
    "position_heartbeat": ("wsgateway_limit_seconds", 1),
}
_LIMIT_HELP = {
    "wsgateway_limit_per_second": "Configured rate limits of a channel, per second, by setting",
    "wsgateway_limit_handshakes": "Configured handshake burst of a channel",
    "wsgateway_limit_connections": "Configured connection limits of a channel (per process)",
    "wsgateway_limit_topics": "Configured topics per connection of a channel",
    "wsgateway_limit_bytes": "Configured size limits of a channel, in bytes, by setting",
    "wsgateway_limit_seconds": "Configured durations of a channel, in seconds, by setting",
    "wsgateway_limit_updates": "Configured history and replay lengths of a channel, in updates",
    "wsgateway_limit_levels": "Configured price levels a book topic keeps per side",
}


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What a channel reports at scrape time."""

    channel: str
    connections: int
    subscriptions: int
    topics: int
    outbox_bytes: int
    #: bytes queued for the one client with the most (what max_outbox_bytes bounds)
    outbox_largest_bytes: int = 0


class ChannelMetrics:
    """The instruments of one channel, label children bound once."""

    def __init__(self, metrics: GatewayMetrics, channel: str) -> None:
        self.connections = metrics.connections.labels(channel)
        self.published = metrics.published.labels(channel)
        self.received = metrics.received.labels(channel)
        self.updates_sent = metrics.updates_sent.labels(channel)
        self.frames_sent = {k: metrics.frames_sent.labels(channel, k) for k in FRAME_KINDS}
        self.slow_consumers = metrics.slow_consumers.labels(channel)
        self.broadcast_duration = metrics.broadcast_duration.labels(channel)
        self.delivery_latency = metrics.delivery_latency.labels(channel)
        self.message_size = metrics.message_size.labels(channel)
        self.rejected = {r: metrics.rejected.labels(channel, r) for r in REJECT_REASONS}
        self.failed = {r: metrics.failed.labels(channel, r) for r in FAIL_REASONS}
        self.errors = {t: metrics.errors.labels(channel, t) for t in ERROR_TYPES}
        self.last_error = {t: metrics.last_error.labels(channel, t) for t in ERROR_TYPES}
        self.disconnects = {r: metrics.disconnects.labels(channel, r) for r in DISCONNECT_REASONS}
        self.client_errors = {
            c: metrics.client_errors.labels(channel, c) for c in CLIENT_ERROR_CODES
        }
        self.rate_limit_hits = {k: metrics.rate_limit_hits.labels(channel, k) for k in RATE_LIMITS}
        self.resumes = {o: metrics.resumes.labels(channel, o) for o in RESUME_OUTCOMES}
        self.replayed = metrics.replayed.labels(channel)
        self.repairs = {o: metrics.repairs.labels(channel, o) for o in REPAIR_OUTCOMES}
        self.resets = metrics.resets.labels(channel)
        self.conflated = metrics.conflated.labels(channel)
        self.checksums = metrics.checksums.labels(channel)
        self.duplicates = metrics.duplicates.labels(channel)
        self._clock = metrics.clock

    def error(self, kind: str) -> None:
        """Count a failure of kind ``kind`` and remember it as the channel's last error."""
        self.errors[kind].inc()
        self.last_error[kind].set(self._clock())


class GatewayMetrics:
    """Every instrument of one gateway, registered on ``registry`` (never the global one)."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        r = registry
        self.start_time = Gauge(
            "wsgateway_start_time_seconds", "Unix time the gateway started", registry=r
        )
        self.start_time.set(clock())
        Gauge(
            "wsgateway_build_info",
            "Always 1; the versions of the gateway, Python and aiohttp as labels",
            ["version", "python", "aiohttp"],
            registry=r,
        ).labels(__version__, platform.python_version(), aiohttp.__version__).set(1)
        self.connections = Counter(
            "wsgateway_connections_total", "WebSocket connections accepted", ["channel"], registry=r
        )
        self.rejected = Counter(
            "wsgateway_connections_rejected_total",
            "WebSocket upgrades refused before the handshake, by reason",
            ["channel", "reason"],
            registry=r,
        )
        self.unknown_channel = Counter(
            "wsgateway_unknown_channel_requests_total",
            "Upgrade requests for a channel that is not configured",
            registry=r,
        )
        self.disconnects = Counter(
            "wsgateway_disconnects_total",
            "Connections ended, by reason",
            ["channel", "reason"],
            registry=r,
        )
        self.published = Counter(
            "wsgateway_messages_published_total",
            "Messages published on the channel (each fanned out once)",
            ["channel"],
            registry=r,
        )
        self.received = Counter(
            "wsgateway_messages_received_total",
            "Frames received from clients",
            ["channel"],
            registry=r,
        )
        self.updates_sent = Counter(
            "wsgateway_updates_sent",
            "Update frames written to client sockets (replayed ones included)",
            ["channel"],
            registry=r,
        )
        self.frames_sent = Counter(
            "wsgateway_frames_sent",
            "Frames other than updates written to client sockets, by kind",
            ["channel", "kind"],
            registry=r,
        )
        self.failed = Counter(
            "wsgateway_updates_failed",
            "Update frames queued for a client that could not be delivered, by reason",
            ["channel", "reason"],
            registry=r,
        )
        self.errors = Counter(
            "wsgateway_errors_total",
            "Connection failures, by type",
            ["channel", "type"],
            registry=r,
        )
        self.last_error = Gauge(
            "wsgateway_last_error_timestamp_seconds",
            "Unix time of the last connection failure of each type",
            ["channel", "type"],
            registry=r,
        )
        self.client_errors = Counter(
            "wsgateway_client_errors_total",
            "Bad client frames answered with an error, by code",
            ["channel", "code"],
            registry=r,
        )
        self.rate_limit_hits = Counter(
            "wsgateway_rate_limit_hits_total",
            "Times a rate limit refused something, by limit",
            ["channel", "limit"],
            registry=r,
        )
        self.slow_consumers = Counter(
            "wsgateway_slow_consumers_total",
            "Clients disconnected because their outbox passed max_outbox_bytes",
            ["channel"],
            registry=r,
        )
        self.resumes = Counter(
            "wsgateway_resumes_total",
            "Topics subscribed with a position to resume from, by outcome",
            ["channel", "outcome"],
            registry=r,
        )
        self.replayed = Counter(
            "wsgateway_replayed_updates_total",
            "Missed updates sent from history to resuming clients",
            ["channel"],
            registry=r,
        )
        self.repairs = Counter(
            "wsgateway_repairs_total",
            "Topics whose live feed skipped updates (broker reconnect, gap), by outcome: "
            "filled from history or reset",
            ["channel", "outcome"],
            registry=r,
        )
        self.conflated = Counter(
            "wsgateway_conflated_updates_total",
            "Updates merged into a later update's frame (from_seq) for a client that lagged "
            "or asked for max_rate, instead of being sent on their own",
            ["channel"],
            registry=r,
        )
        self.checksums = Counter(
            "wsgateway_checksum_frames_total",
            "Book updates relayed with a checksum (once per update, not per client; "
            "snapshots are frames_sent{kind=snapshot})",
            ["channel"],
            registry=r,
        )
        self.resets = Counter(
            "wsgateway_resets_sent_total",
            "Reset frames sent to clients: a topic's continuity broke",
            ["channel"],
            registry=r,
        )
        self.duplicates = Counter(
            "wsgateway_duplicate_updates_total",
            "Updates the relay dropped because they were delivered already",
            ["channel"],
            registry=r,
        )
        self.broadcast_duration = Histogram(
            "wsgateway_broadcast_duration_seconds",
            "Time to fan one message out to its subscribers",
            ["channel"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "wsgateway_delivery_latency_seconds",
            "Time from publish to the write of the update to its subscribers' sockets",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.message_size = Histogram(
            "wsgateway_message_size_bytes",
            "Size of each update frame fanned out",
            ["channel"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.pending_connections = Gauge(
            "wsgateway_pending_connections",
            "Connections not upgraded to WebSocket: handshakes, HTTP requests, idle keep-alive",
            registry=r,
        )
        self.pending_refused = Counter(
            "wsgateway_pending_connections_refused_total",
            "New connections closed at once: their address held max_pending_per_ip pending ones",
            registry=r,
        )
        ProcessMetrics(registry=r)

    def for_channel(self, channel: str) -> ChannelMetrics:
        return ChannelMetrics(self, channel)


class ProcessMetrics(ProcessCollector):
    """prometheus_client's ``process_*`` metrics, with ``process_open_fds`` read in O(1).

    prometheus_client lists ``/proc/self/fd`` on every scrape: 10 ms at 10,000 connections,
    most of a scrape's cost (benchmarks/scrape.py). Since Linux 6.2 ``stat`` of that
    directory gives the count as its size; an older kernel reports 0, and is listed.
    """

    def collect(self) -> Iterable[Metric]:
        if not self._btime:  # no /proc here
            return []
        import resource  # Unix only, like /proc

        prefix, proc = self._prefix, f"{self._proc}/self"
        result: list[Metric] = []
        try:
            with open(f"{proc}/stat", "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            ticks = self._ticks
            result += [
                GaugeMetricFamily(
                    prefix + "virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    value=float(parts[20]),
                ),
                GaugeMetricFamily(
                    prefix + "resident_memory_bytes",
                    "Resident memory size in bytes.",
                    value=float(parts[21]) * self._pagesize,
                ),
                GaugeMetricFamily(
                    prefix + "start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    value=float(parts[19]) / ticks + self._btime,
                ),
                CounterMetricFamily(
                    prefix + "cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                    value=(float(parts[11]) + float(parts[12])) / ticks,
                ),
            ]
            open_fds = os.stat(f"{proc}/fd").st_size or len(os.listdir(f"{proc}/fd"))
            max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            result += [
                GaugeMetricFamily(
                    prefix + "open_fds", "Number of open file descriptors.", value=open_fds
                ),
                GaugeMetricFamily(
                    prefix + "max_fds",
                    "Maximum number of open file descriptors.",
                    value=float("inf") if max_fds == resource.RLIM_INFINITY else max_fds,
                ),
            ]
        except OSError:
            pass
        return result


class StateCollector(Collector):
    """Gauges read at scrape time from the live objects, so they never drift."""

    def __init__(
        self,
        states: Callable[[], Iterable[ChannelState]],
        limits: Mapping[str, Limits],
        broker_connected: Callable[[], bool],
        closing_sockets: Callable[[], int] = lambda: 0,
        broker_stats: Callable[[], BrokerStats] = BrokerStats,
    ) -> None:
        self._states = states
        self._limits = limits
        self._broker_connected = broker_connected
        self._closing_sockets = closing_sockets
        self._broker_stats = broker_stats

    def describe(self) -> Iterable[Metric]:
        return [
            *self._families(),
            *self._limit_families().values(),
            self._mode_family(),
            *self._broker_counters(BrokerStats()),
        ]

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        active, subscriptions, topics, outbox, largest, broker, sockets = families
        connections = 0
        for state in self._states():
            connections += state.connections
            active.add_metric([state.channel], state.connections)
            subscriptions.add_metric([state.channel], state.subscriptions)
            topics.add_metric([state.channel], state.topics)
            outbox.add_metric([state.channel], state.outbox_bytes)
            largest.add_metric([state.channel], state.outbox_largest_bytes)
        limits = self._limit_families()
        mode = self._mode_family()
        for channel, values in self._limits.items():
            mode.add_metric([channel, values.mode_for(channel)], 1.0)
            for item in fields(values):
                if item.name in NON_NUMERIC_LIMITS:
                    continue
                name, factor = LIMIT_METRICS[item.name]
                value = float(getattr(values, item.name)) * factor
                limits[name].add_metric([channel, item.name], value)
        broker.add_metric([], 1.0 if self._broker_connected() else 0.0)
        sockets.add_metric([], connections + self._closing_sockets())
        return [
            *families,
            *limits.values(),
            mode,
            *self._broker_counters(self._broker_stats()),
        ]

    @staticmethod
    def _mode_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "wsgateway_channel_mode",
            "The topic mode of a channel (stream, last or book): 1 for its mode",
            labels=["channel", "mode"],
        )

    @staticmethod
    def _limit_families() -> dict[str, GaugeMetricFamily]:
        return {
            name: GaugeMetricFamily(name, text, labels=["channel", "setting"])
            for name, text in _LIMIT_HELP.items()
        }

    @staticmethod
    def _broker_counters(stats: BrokerStats) -> list[CounterMetricFamily]:
        # Kept by the broker itself (it counts in its reader and publish paths), read here.
        return [
            CounterMetricFamily(
                "wsgateway_broker_reconnects",
                "Times the broker's connection to its server was lost and made again",
                value=stats.reconnects,
            ),
            CounterMetricFamily(
                "wsgateway_broker_publish_errors",
                "Publishes refused because the broker's server could not be reached or failed",
                value=stats.publish_errors,
            ),
            CounterMetricFamily(
                "wsgateway_broker_probe_failures",
                "Probes of the broker's subscription that did not come back in time "
                "(the subscription was rebuilt)",
                value=stats.probe_failures,
            ),
        ]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "wsgateway_connections_active", "Open WebSocket connections", labels=["channel"]
            ),
            GaugeMetricFamily(
                "wsgateway_subscriptions_active",
                "Topic subscriptions held by open connections",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "wsgateway_topics_active", "Topics with at least one subscriber", labels=["channel"]
            ),
            GaugeMetricFamily(
                "wsgateway_outbox_bytes",
                "Bytes queued for clients and not yet taken by the kernel",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "wsgateway_outbox_largest_bytes",
                "Bytes queued for the one client with the most queued (max_outbox_bytes "
                "bounds each client)",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "wsgateway_broker_connected", "1 while the broker can move messages, else 0"
            ),
            GaugeMetricFamily(
                "wsgateway_open_sockets",
                "WebSocket sockets this process holds: open connections, and closed ones whose "
                "socket is not released yet (reset after close_timeout)",
            ),
        ]


# -- the JSON view ----------------------------------------------------------------------------


def _samples(registry: Collector) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _rate(sent: float, failed: float) -> float | None:
    attempted = sent + failed
    return None if attempted == 0 else round(sent / attempted, 6)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, as PromQL's
    ``histogram_quantile`` computes it: linear within the bucket that holds the rank; the
    highest finite bound when the rank falls in ``+Inf``; None with no observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def buckets_json(counts: Mapping[float, float]) -> list[list[float | str]]:
    """Cumulative ``(upper bound, count)`` buckets as JSON: ``[[0.0001, 3], ..., ["+Inf", 9]]``.

    Lifetime counts, for a reader that wants quantiles over its own window (the status page
    subtracts two polls); ``+Inf`` is a string because JSON has no infinity."""
    return [
        ["+Inf" if bound == float("inf") else bound, int(count)]
        for bound, count in sorted(counts.items())
    ]


def to_json(registry: Collector, channels: Sequence[str], now: float) -> dict[str, Any]:
    """The ``/api/ws/metrics`` document, read only from ``registry``.

    ``messages_sent`` and ``messages_failed`` count update frames (the success rate is
    theirs); the other frames written are ``frames_sent``, by kind. ``limits`` are in the
    settings' own units, whatever unit their metric has.

    ``registry`` may hold the series of several workers (``workermetrics.merge``, a
    ``worker`` label on each): the document shows the node. Counters, connections and
    histogram buckets add up; the uptime is the oldest worker's; the broker counts as
    connected only when it is in every worker; limits are the same in every worker.
    """
    per: dict[str, dict[str, Any]] = {
        name: {
            "total_connections": 0,
            "active_connections": 0,
            "messages_sent": 0,
            "messages_failed": 0,
            "frames_sent": {kind: 0 for kind in FRAME_KINDS},
            "errors": 0,
            "last_error": None,
            "success_rate": None,
            "uptime": 0.0,
            "messages_published": 0,
            "messages_received": 0,
            "subscriptions": 0,
            "topics": 0,
            "outbox_bytes": 0,
            "slow_consumers": 0,
            "conflated": 0,
            "checksum_frames": 0,
            "rejected": {reason: 0 for reason in REJECT_REASONS},
            "rate_limits": {},
            "mode": None,
            "limits": {},
        }
        for name in channels
    }
    counters = {
        "wsgateway_connections_total": "total_connections",
        "wsgateway_connections_active": "active_connections",
        "wsgateway_updates_sent_total": "messages_sent",
        "wsgateway_updates_failed_total": "messages_failed",
        "wsgateway_conflated_updates_total": "conflated",
        "wsgateway_checksum_frames_total": "checksum_frames",
        "wsgateway_errors_total": "errors",
        "wsgateway_messages_published_total": "messages_published",
        "wsgateway_messages_received_total": "messages_received",
        "wsgateway_subscriptions_active": "subscriptions",
        "wsgateway_topics_active": "topics",
        "wsgateway_outbox_bytes": "outbox_bytes",
        "wsgateway_slow_consumers_total": "slow_consumers",
    }
    start_time = now
    broker_states: list[float] = []
    open_sockets = 0
    workers: dict[str, bool] = {}
    latency_buckets: dict[str, dict[float, float]] = {name: {} for name in channels}
    for name, labels, value in _samples(registry):
        if name == "wsgateway_start_time_seconds":
            start_time = min(start_time, value)
        elif name == "wsgateway_broker_connected":
            broker_states.append(value)
        elif name == "wsgateway_open_sockets":
            open_sockets += int(value)
        elif name == WORKER_UP:
            workers[labels[WORKER_LABEL]] = value == 1
        channel = per.get(labels.get("channel", ""))
        if channel is None:
            continue
        if name in counters:
            channel[counters[name]] += int(value)
        elif name == "wsgateway_connections_rejected_total":
            rejected = channel["rejected"]
            rejected[labels["reason"]] = rejected.get(labels["reason"], 0) + int(value)
        elif name == "wsgateway_frames_sent_total":
            frames = channel["frames_sent"]
            frames[labels["kind"]] = frames.get(labels["kind"], 0) + int(value)
        elif name in _LIMIT_HELP:
            setting = labels["setting"]
            value /= LIMIT_METRICS[setting][1]  # back to the setting's own unit
            channel["limits"][setting] = value if setting in FLOAT_LIMITS else round(value)
        elif name == "wsgateway_channel_mode" and value == 1:
            channel["mode"] = labels["mode"]
        elif name == "wsgateway_delivery_latency_seconds_bucket":
            counts = latency_buckets[labels["channel"]]
            le = float(labels["le"])
            counts[le] = counts.get(le, 0.0) + value
        elif name == "wsgateway_last_error_timestamp_seconds" and value > 0:
            last = channel["last_error"]
            if last is None or value > last["timestamp"]:
                channel["last_error"] = {"type": labels["type"], "timestamp": value}

    uptime = round(max(0.0, now - start_time), 3)
    for channel in per.values():
        channel["success_rate"] = _rate(channel["messages_sent"], channel["messages_failed"])
        channel["uptime"] = uptime
        limits = channel["limits"]
        channel["limits"] = {k: limits[k] for k in LIMIT_METRICS if k in limits}  # their order
        channel["rate_limits"] = {k: limits.get(k) for k in RATE_LIMITS[::-1]}
    for name, counts in latency_buckets.items():
        per[name]["latency_seconds"] = {
            f"p{round(q * 100)}": _round(histogram_quantile(q, list(counts.items())))
            for q in LATENCY_QUANTILES
        }
        per[name]["latency_buckets"] = buckets_json(counts)
    sent = sum(c["messages_sent"] for c in per.values())
    failed = sum(c["messages_failed"] for c in per.values())
    view: dict[str, Any] = {
        "total_active_connections": sum(c["active_connections"] for c in per.values()),
        "open_sockets": open_sockets,
        "total_messages_sent": sent,
        "total_errors": sum(c["errors"] for c in per.values()),
        "overall_success_rate": _rate(sent, failed),
        "uptime_seconds": uptime,
        "broker_connected": bool(broker_states) and all(v == 1 for v in broker_states),
        "managers": per,
    }
    if workers:
        view["workers"] = {
            "count": len(workers),
            "missing": sorted((w for w, up in workers.items() if not up), key=_worker_order),
        }
    return view


def _worker_order(worker: str) -> tuple[int, str]:
    return (int(worker), "") if worker.isdigit() else (0, worker)
