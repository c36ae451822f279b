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
from prometheus_client.registry import Collector

from .brokers import NO_POSITION, Broker, History, Message, Position, Resync, Snapshot, Update
from .channel import REJECTION_LOG_INTERVAL, Channel, Joining
from .cluster import Cluster
from .connection import Connection
from .continuity import Verdict
from .drain import DrainPlan, plan_drain
from .errors import BrokerUnavailable, ClientError, RateLimited, ServiceRestart, Unavailable
from .metrics import GatewayMetrics, StateCollector, to_json
from .protocol import RequestId, Subscribe, parse_publish, subscribed
from .ratelimit import LogThrottle, TokenBucket
from .release import SocketRelease
from .resume import Outcome
from .settings import Settings
from .siblings import Siblings

log = logging.getLogger("wsgateway")

#: Longest wait for the broker's answer to a subscribe (positions, history); then the client
#: gets an ``unavailable`` error and may try again.
BROKER_READ_TIMEOUT = 5.0
#: Topics one connection may subscribe per second that need the broker (a position or a
#: history read), as a multiple of max_topics, and how many it may save up: a client that
#: subscribes and unsubscribes in a loop cannot turn its messages into Redis load.
BROKER_READS_PER_SECOND = 0.1
BROKER_READS_BURST = 2
#: Topics asked of the broker in one positions() call when the relay resynchronises.
RESYNC_CHUNK = 500
#: Seconds between two sweeps of the positions of idle topics (continuity.py).
EXPIRE_INTERVAL = 10.0


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
        #: the channels whose topics are order books: their publishes are book messages
        self.books = frozenset(name for name, c in self.channels.items() if c.mode == "book")
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
        #: called when a drain starts (``serve --workers``: the whole node drains)
        self.on_drain: Callable[[], None] | None = None
        self._drain: _DrainRun | None = None
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
        batch: list[Message] = parse_publish(document, self.settings.channels, self.books)
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

    # -- subscribing ----------------------------------------------------------------------------

    async def subscribe(self, channel: Channel, conn: Connection, request: Subscribe) -> None:
        """Subscribe ``conn`` and queue the ``subscribed`` reply, then the missed updates.

        Topics this process relays are joined at once; the others need the broker's
        position (and history, with ``since``): their live updates are buffered meanwhile
        and merged by seq (resume.py), so the client gets each update once, in order.
        Raises ClientError for a request that is not allowed, or when the broker does not
        answer (``unavailable``; nothing is left subscribed).
        """
        try:
            joining = channel.subscribe(conn, request.topics, request.since, request.max_rate)
        except ClientError as exc:
            exc.request_id = request.id  # the channel's refusal does not know the request's id
            raise
        histories: list[History] = []
        looked_up: dict[str, Position] = {}
        if joining.pending or joining.lookup:
            self._check_broker_reads(channel, conn, joining, request.id)
            try:
                histories, looked_up = await asyncio.wait_for(
                    self._read_broker(channel, joining),
                    BROKER_READ_TIMEOUT,
                )
            except (ConnectionError, OSError, TimeoutError) as exc:
                channel.abandon(conn, joining)
                raise Unavailable(
                    "the broker did not answer; nothing was subscribed, try again", request.id
                ) from exc
        if conn.closing:
            return
        entries = {topic: _entry(position) for topic, position in joining.known.items()}
        entries.update((topic, _entry(position)) for topic, position in looked_up.items())
        outcomes: list[tuple[str, Outcome]] = []
        metrics = channel.metrics
        for recovery, history in zip(joining.pending, histories, strict=True):
            outcome = channel.complete(recovery, history)
            if outcome is None:
                continue
            entries[recovery.topic] = outcome.reply_entry()
            outcomes.append((recovery.topic, outcome))
            if outcome.recovered is not None:
                metrics.resumes["recovered" if outcome.recovered else "not_recovered"].inc()
                metrics.replayed.inc(outcome.replayed)
        positions = {t: entries[t] for t in joining.topics if t in entries}
        channel.send(conn, subscribed(joining.topics, request.id, positions), "reply")
        for topic, outcome in outcomes:
            channel.catch_up(conn, topic, outcome)
        if request.heartbeat is not None:
            # After the reply and its replay: set only by a subscribe that succeeded.
            channel.set_heartbeat(conn, request.heartbeat)

    def _check_broker_reads(
        self, channel: Channel, conn: Connection, joining: Joining, request_id: RequestId
    ) -> None:
        """Refuse (rate_limited, nothing subscribed) a subscribe whose broker reads exceed
        the connection's budget: BROKER_READS_PER_SECOND x max_topics, saved up to
        BROKER_READS_BURST x max_topics (a reconnecting client resumes all its topics at
        once, well within it)."""
        reads = len(joining.lookup) + sum(
            1 for r in joining.pending if r.topic not in joining.known
        )
        now = time.monotonic()
        max_topics = channel.limits.max_topics
        if conn.broker_reads is None:
            conn.broker_reads = TokenBucket(
                BROKER_READS_PER_SECOND * max_topics, BROKER_READS_BURST * max_topics, now
            )
        if not conn.broker_reads.try_take(now, reads):
            channel.abandon(conn, joining)
            wait = conn.broker_reads.wait_time(now, reads)
            error = RateLimited(
                "subscribing to this many topics the gateway does not relay, or resuming "
                f"them, is limited to {BROKER_READS_PER_SECOND * max_topics:g} a second per "
                "connection; nothing was subscribed, retry later",
                request_id,
            )
            error.retry_after = round(wait, 3)
            raise error

    async def _read_broker(
        self, channel: Channel, joining: Joining
    ) -> tuple[list[History], dict[str, Position]]:
        """The broker's answer for each pending recovery of ``joining`` (its position, with
        the missed updates when it resumes), and the positions of ``joining.lookup``."""
        broker = self.broker
        name = channel.name
        limit = channel.limits.max_replay
        known = joining.known
        asked = [r.topic for r in joining.pending if r.since is None and r.topic not in known]
        asked += joining.lookup
        fresh: list[str] = []  # joined with a snapshot: a last or book topic without since
        if channel.snapshots:
            fresh = [r.topic for r in joining.pending if r.since is None]
            asked = [topic for topic in asked if topic not in fresh]
        positions = await broker.positions(name, asked) if asked else {}
        positions.update(known)
        resumed = {r.topic: r.since for r in joining.pending if r.since is not None}
        answers, read = await asyncio.gather(
            asyncio.gather(
                *(broker.history(name, topic, since, limit) for topic, since in resumed.items())
            ),
            asyncio.gather(*(broker.snapshot(name, topic) for topic in fresh)),
        )
        by_topic = dict(zip(resumed, answers, strict=True))
        snapshots = dict(zip(fresh, read, strict=True))
        if channel.snapshots:
            # Not recovered: the client is made whole again with the topic's snapshot.
            lost = [t for t, h in by_topic.items() if h.updates is None and h.position.seq]
            for topic, snapshot in zip(
                lost, await asyncio.gather(*(broker.snapshot(name, t) for t in lost)), strict=True
            ):
                snapshots[topic] = snapshot
                by_topic[topic] = _with_snapshot(by_topic[topic], snapshot)
        histories = []
        for r in joining.pending:
            if r.since is not None:
                histories.append(by_topic[r.topic])
            elif r.topic in snapshots:
                histories.append(_with_snapshot(None, snapshots[r.topic]))
            else:
                histories.append(History(positions[r.topic], []))
        return histories, {topic: positions[topic] for topic in joining.lookup}

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
        expired_at = time.monotonic()
        try:
            async for batch in self.broker.batches():
                if isinstance(batch, Resync):
                    await self.resync()
                    continue
                for update in batch:
                    channel = channels.get(update.channel)
                    if channel is None:
                        continue  # another node's channel that this one does not serve
                    verdict = channel.positions.classify(update)
                    if verdict is Verdict.NEXT:
                        self._broadcast(channel, update)
                    else:
                        await self._mend(channel, update, verdict)
                    if channel.turn_bytes >= channel.slice_bytes:
                        await channel.pace()
                for channel in channels.values():
                    if channel.waiting:
                        await channel.pace()
                if time.monotonic() - expired_at > EXPIRE_INTERVAL:
                    expired_at = time.monotonic()
                    for channel in channels.values():
                        channel.expire_positions()
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

    def _broadcast(self, channel: Channel, update: Update) -> None:
        try:
            channel.broadcast(update)
        except Exception:
            # One bad message must not stop the feed for everyone, nor write one
            # traceback per message: counted always, logged throttled.
            channel.metrics.error("internal")
            self._log_broadcast_failure(update.channel)

    async def _mend(self, channel: Channel, update: Update, verdict: Verdict) -> None:
        """An update that is not the next one of its topic (continuity.py): fill the gap
        from the broker's history, or tell the subscribers their feed restarted."""
        metrics = channel.metrics
        if verdict is Verdict.DUPLICATE:
            metrics.duplicates.inc()
            return
        topic = update.topic
        # A gap is filled from the relayed position; another epoch (the broker lost the
        # topic's state and numbers it afresh) from its start, if its history has all of it.
        gap = verdict is Verdict.GAP
        since = channel.positions.position(topic) if gap else Position(update.epoch, 0)
        missed = await self._history(channel, topic, since)
        if missed is not None:
            if not gap:
                channel.reset_topic(topic, since)
            await self._deliver(channel, missed)
        outcome = "filled" if gap and missed is not None else "reset"
        after = channel.positions.classify(update)
        if after is not Verdict.DUPLICATE:  # else the history reached it
            if after is not Verdict.NEXT:
                # The updates in between are gone for good: the subscribers are told so,
                # then the feed goes on.
                outcome = "reset"
                channel.reset_topic(topic, Position(update.epoch, update.seq - 1))
            self._broadcast(channel, update)
        metrics.repairs[outcome].inc()

    async def _history(self, channel: Channel, topic: str, since: Position) -> list[Update] | None:
        """The updates of ``topic`` after ``since`` from the broker's history; None when it
        does not reach back, or cannot be read."""
        try:
            history = await asyncio.wait_for(
                self.broker.history(channel.name, topic, since, channel.limits.max_replay),
                BROKER_READ_TIMEOUT,
            )
        except (ConnectionError, OSError, TimeoutError):
            log.warning("could not read the history of %s/%s to mend it", channel.name, topic)
            return None
        return None if history.updates is None else list(history.updates)

    async def _deliver(self, channel: Channel, updates: list[Update]) -> None:
        """Broadcast missed updates, skipping those relayed meanwhile, in slices."""
        for missed in updates:
            if channel.positions.classify(missed) is Verdict.NEXT:
                self._broadcast(channel, missed)
            if channel.turn_bytes >= channel.slice_bytes:
                await channel.pace()

    async def _catch_up(self, channel: Channel, topic: str, position: Position) -> str:
        """Bring ``topic`` from its relayed position to the broker's ``position``; returns
        the outcome, "filled" or "reset"."""
        relayed = channel.positions.position(topic)
        if position.epoch == relayed.epoch and position.seq > relayed.seq:
            missed = await self._history(channel, topic, relayed)
            if missed is not None:
                await self._deliver(channel, missed)
                return "filled"
        elif position.epoch != relayed.epoch and position.seq > 0:
            missed = await self._history(channel, topic, Position(position.epoch, 0))
            if missed is not None:
                channel.reset_topic(topic, Position(position.epoch, 0))
                await self._deliver(channel, missed)
                return "reset"
        # Lost for good (trimmed, expired), or the broker is behind what was relayed here
        # (acknowledged writes lost in a failover): the subscribers restart from it.
        channel.reset_topic(topic, position)
        return "reset"

    async def resync(self) -> None:
        """After the broker's live feed came back: check every topic with subscribers here
        against the broker's position; fill what was missed or reset the subscribers."""
        outcomes = {"filled": 0, "reset": 0}
        for channel in self.channels.values():
            topics = []
            for topic in channel.positions.topics():
                if channel.has_subscribers(topic):
                    topics.append(topic)
                else:
                    channel.positions.forget(topic)  # relearned from the next update
            for start in range(0, len(topics), RESYNC_CHUNK):
                chunk = topics[start : start + RESYNC_CHUNK]
                try:
                    positions = await asyncio.wait_for(
                        self.broker.positions(channel.name, chunk), BROKER_READ_TIMEOUT
                    )
                except (ConnectionError, OSError, TimeoutError):
                    # The broker went away again; it yields another resync when it is back.
                    log.warning("resync of %s: the broker did not answer", channel.name)
                    return
                for topic, position in positions.items():
                    if position != channel.positions.position(topic):
                        outcome = await self._catch_up(channel, topic, position)
                        channel.metrics.repairs[outcome].inc()
                        outcomes[outcome] += 1
        if outcomes["filled"] or outcomes["reset"]:
            log.warning(
                "resynchronised with the broker: %d topic(s) filled from history, %d reset",
                outcomes["filled"],
                outcomes["reset"],
            )

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
        if self.on_drain is not None:
            self.on_drain()
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


def _with_snapshot(history: History | None, snapshot: Snapshot | None) -> History:
    """The broker's answer for a topic joined with its snapshot (None: it has no state)."""
    if snapshot is None:
        return history if history is not None else History(NO_POSITION, [])
    return History(snapshot.position, None, snapshot)


def _entry(position: Position) -> dict[str, Any]:
    return {"seq": position.seq, "epoch": position.epoch}


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
