"""Gateway: the state of one gateway process, and its Python API for embedding.

It owns the channels, the broker, the metrics and the relay loop that hands each message
from the broker to its channel. ``web.py`` serves it over HTTP; an embedding application
calls :meth:`Gateway.publish` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from .brokers import Broker, Message, Resync
from .channel import REJECTION_LOG_INTERVAL, Channel
from .connection import Connection
from .drain import DrainPlan, plan_drain
from .errors import BrokerUnavailable, ServiceRestart
from .metrics import GatewayMetrics, StateCollector, to_json
from .protocol import parse_publish
from .ratelimit import LogThrottle
from .release import SocketRelease
from .settings import Settings

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
        #: set once a drain (:meth:`drain`) has closed its last client
        self.drained = asyncio.Event()
        self._drain: _DrainRun | None = None
        self.relay_failure: str | None = None
        self._log_throttle = LogThrottle(REJECTION_LOG_INTERVAL)

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

    def drain(
        self, seconds: float | None = None, *, rng: random.Random | None = None
    ) -> DrainStatus:
        """Drain this node: refuse new clients and answer ``/readyz`` 503 at once, then close
        every client with 1012 in jittered batches over ``seconds`` (default
        ``drain_seconds``; ``drain.py`` plans them); :attr:`drained` is set after the last.

        Idempotent: during a drain it starts nothing and returns where that drain stands.
        """
        if self._drain is not None:
            return self._drain.status(started=False)
        self.start_draining()
        clients = [(ch, conn) for ch in self.channels.values() for conn in ch.connections]
        span = self.settings.drain_seconds if seconds is None else seconds
        plan = plan_drain(clients, span, rng or random.Random())
        run = self._drain = _DrainRun(plan)
        log.info("draining: closing %d client(s) with 1012 over %.1f s", plan.clients, plan.seconds)
        run.task = asyncio.get_running_loop().create_task(
            self._run_drain(run), name="wsgateway-drain"
        )
        return run.status(started=True)

    def hurry_drain(self) -> None:
        """Close what a drain in progress has not closed yet, now (a second SIGTERM)."""
        if self._drain is not None:
            self._drain.hurry.set()

    async def end_drain(self) -> None:
        """Stop a drain in progress where it stands (the app is shutting down, and closes
        the rest with 1001 itself)."""
        task = self._drain.task if self._drain is not None else None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_drain(self, run: _DrainRun) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for batch in run.plan.batches:
                delay = started + batch.at - loop.time()
                if delay > 0 and not run.hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.hurry.wait(), delay)
                for channel, conn in batch.clients:
                    if not conn.closing:  # not gone on its own meanwhile
                        channel.close(
                            conn, ServiceRestart.close_code, "draining", ServiceRestart.reason
                        )
                        run.closed += 1
            # A client whose upgrade was admitted just before the drain began opens just
            # after it: not in the plan, closed here rather than left to the 1001 at exit.
            run.closed += self.close_all(
                ServiceRestart.close_code, "draining", ServiceRestart.reason
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never silent; the process still exits, and its shutdown closes the rest (1001).
            log.exception("the drain failed; the rest of the clients are closed with 1001")
        log.info(
            "drained: closed %d client(s) with 1012 in %.1f s (%d when the drain began)",
            run.closed,
            loop.time() - started,
            run.plan.clients,
        )
        self.drained.set()

    def close_all(self, code: int, message: str, reason: str) -> int:
        """Close every client of every channel; returns how many there were."""
        return sum(ch.close_all(code, message, reason) for ch in self.channels.values())

    def metrics_json(self) -> dict[str, Any]:
        """The ``/api/ws/metrics`` document."""
        return to_json(self.registry, self.settings.channels, self.clock())


@dataclasses.dataclass(frozen=True, slots=True)
class DrainStatus:
    """Where a drain stands: the ``POST /api/drain`` answer."""

    #: clients the drain closes in all (those connected when it started)
    clients: int
    #: the span it spreads them over
    seconds: float
    #: clients it has closed so far
    closed: int
    #: True when this call started it, False when a drain was already under way
    started: bool


class _DrainRun:
    """One drain under way: its plan, its task, how far it got."""

    def __init__(self, plan: DrainPlan[tuple[Channel, Connection]]) -> None:
        self.plan = plan
        self.closed = 0
        self.hurry = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def status(self, *, started: bool) -> DrainStatus:
        return DrainStatus(self.plan.clients, self.plan.seconds, self.closed, started)
