"""Gateway: the state of one gateway process, and its Python API for embedding.

It owns the channels, the broker, the metrics and the relay loop that hands each message
from the broker to its channel. ``web.py`` serves it over HTTP; an embedding application
calls :meth:`Gateway.publish` directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from .brokers import Broker, Message, Resync
from .channel import REJECTION_LOG_INTERVAL, Channel
from .cluster import Cluster
from .errors import BrokerUnavailable
from .metrics import GatewayMetrics, StateCollector, to_json
from .protocol import parse_publish
from .ratelimit import LogThrottle
from .release import SocketRelease
from .settings import Settings
from .siblings import Siblings

log = logging.getLogger("wsgateway")


class Gateway:
    """One process's channels, broker and metrics."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.clock = clock
        self.metrics = GatewayMetrics(registry, clock)
        self.channels: dict[str, Channel] = {
            name: Channel(
                name, settings.limits_for(name), self.metrics.for_channel(name), wall_clock=clock
            )
            for name in settings.channels
        }
        #: sockets of ended connections, each reset if still held after close_timeout
        self.sockets = SocketRelease(settings.close_timeout)
        registry.register(
            StateCollector(
                lambda: [channel.state() for channel in self.channels.values()],
                {name: channel.limits for name, channel in self.channels.items()},
                # A crashed relay moves nothing either, whatever the broker says.
                lambda: self.broker.connected and self.relay_failure is None,
                self.sockets.held,
                self.broker.stats,
            )
        )
        self.draining = False
        self.relay_failure: str | None = None
        self._log_throttle = LogThrottle(REJECTION_LOG_INTERVAL)
        #: with ``--workers``: the other workers of this node, whose figures every scrape
        #: adds (create_app sets it)
        self.siblings: Siblings | None = None
        #: every process's record in the broker, for the ``nodes`` view (create_app sets it)
        self.cluster: Cluster | None = None

    # -- the Python API -----------------------------------------------------------------------

    async def publish(self, channel: str, topic: str, data: Any) -> int:
        """Publish one message; returns 1. Raises :class:`PublishError` for bad input."""
        return await self.publish_many([{"channel": channel, "topic": topic, "data": data}])

    async def publish_many(self, messages: Sequence[dict[str, Any]]) -> int:
        """Publish a batch of ``{"channel", "topic", "data"}`` dicts; returns how many."""
        return await self.publish_document({"messages": list(messages)})

    async def publish_document(self, document: object) -> int:
        """Validate a publish body (one message or ``{"messages": [...]}``) and publish it."""
        batch: list[Message] = parse_publish(document, self.settings.channels)
        if self.relay_failure is not None:
            # Accepting would lose the messages: nothing hands them to the channels.
            raise BrokerUnavailable(
                "broker", "the gateway cannot deliver messages; try again later"
            )
        if not self.broker.connected:
            raise BrokerUnavailable("broker", "the broker is not connected; try again later")
        try:
            return await self.broker.publish(batch)
        except (ConnectionError, TimeoutError) as exc:
            # The broker stopped while this publisher waited (e.g. the relay crashed), or
            # its server is unreachable or timed out; a split batch says what went through.
            accepted = getattr(exc, "accepted", 0)
            detail = f" after the first {accepted} messages were published" if accepted else ""
            raise BrokerUnavailable(
                "broker", f"the broker stopped{detail}; try again later"
            ) from None

    # -- lifecycle ----------------------------------------------------------------------------

    async def relay(self) -> None:
        """Hand every message from the broker to its channel, until the broker stops.

        A batch goes out in slices: once a channel has queued ``slice_bytes`` of frames, they
        are written before more are queued, and while a lagging client of the channel is on
        course to catch up the relay waits (:meth:`Channel.pace`, bounded by
        ``slow_consumer_grace``). A reader that stops or trickles is not waited for: it
        would pause every channel's feed (outbox.py). Meanwhile the
        broker's bounded queue fills and publishers wait: a legal burst slows the publisher,
        it does not cut the readers.
        """
        channels = self.channels
        try:
            async for batch in self.broker.batches():
                if isinstance(batch, Resync):
                    continue
                for update in batch:
                    channel = channels.get(update.channel)
                    if channel is None:
                        continue  # another node's channel that this one does not serve
                    try:
                        channel.broadcast(update)
                    except Exception:
                        # One bad message must not stop the feed for everyone, nor write
                        # one traceback per message: counted always, logged throttled.
                        channel.metrics.error("internal")
                        self._log_broadcast_failure(update.channel)
                    if channel.turn_bytes >= channel.slice_bytes:
                        await channel.pace()
                for channel in channels.values():
                    if channel.waiting:
                        await channel.pace()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.relay_failure = f"relay loop crashed: {type(exc).__name__}"
            log.exception("the relay loop crashed; the gateway is no longer ready")
            # Nothing consumes the broker any more: stop it, so that publishers are refused
            # (503) instead of accepted and lost, and those waiting for room are released.
            try:
                await self.broker.stop()
            except Exception:
                log.exception("stopping the broker after the relay crashed failed")
            raise

    def _log_broadcast_failure(self, channel: str) -> None:
        more = self._log_throttle.note(f"broadcast:{channel}", time.monotonic())
        if more is not None:
            log.error("broadcast on %s failed%s", channel, more, exc_info=True)

    def reject_unknown_channel(self) -> None:
        """Count an upgrade for a channel that is not configured, and log it (throttled;
        the requested name stays out of the log and the labels: it is the client's text)."""
        self.metrics.unknown_channel.inc()
        more = self._log_throttle.note("unknown_channel", time.monotonic())
        if more is not None:
            log.warning("rejected connection: unknown_channel%s", more)

    def readiness(self) -> str | None:
        """None when ready to serve; else the reason it is not."""
        if self.draining:
            return "draining"
        if self.relay_failure is not None:
            return self.relay_failure
        if not self.broker.connected:
            return "broker disconnected"
        return None

    def start_draining(self) -> None:
        """Refuse new connections from now on (``/readyz`` says 503)."""
        self.draining = True
        for channel in self.channels.values():
            channel.draining = True

    def close_all(self, code: int, message: str, reason: str) -> int:
        """Close every client of every channel; returns how many there were."""
        return sum(ch.close_all(code, message, reason) for ch in self.channels.values())

    async def node_registry(self) -> Collector:
        """What ``/metrics`` and ``/api/ws/metrics`` show: this process's registry, or with
        ``--workers`` every worker's series of this node (siblings.py)."""
        if self.siblings is None:
            return self.registry
        return await self.siblings.node_registry()

    def metrics_json(self, registry: Collector | None = None) -> dict[str, Any]:
        """The ``/api/ws/metrics`` document of ``registry`` (default: this process's), with
        the cluster's ``nodes``."""
        view = to_json(
            self.registry if registry is None else registry, self.settings.channels, self.clock()
        )
        view["nodes"] = [] if self.cluster is None else self.cluster.view()
        return view
