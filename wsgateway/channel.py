"""Channel: one channel's connections, subscriptions and fan-out; who may connect is
decided by its :class:`~wsgateway.admission.Admission`.

The fan-out follows DESIGN.md, "The hot path": an update is encoded and framed once, the
frame is appended to each subscriber's outbox, and one callback per event-loop turn writes
each dirty outbox with a single ``transport.write``. No task, future or ``await`` per
delivery. A client whose queued bytes pass ``max_outbox_bytes`` lags: the relay waits for it
(:meth:`Channel.pace`) while it drains fast enough to catch up within ``slow_consumer_grace``;
one that does not is dropped (1013) when its grace ends or its queue reaches the hard cap;
the rule is in ``outbox.py``. Metrics are counted once per broadcast or flush, not
per delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from os import write as os_write

from . import protocol
from .admission import Admission
from .brokers.base import History, Position, Snapshot, Update
from .conflation import Pending
from .connection import Closer, Connection, Transport
from .continuity import TopicPositions
from .errors import BadMessage, Draining, ForbiddenTopic, Rejected, TooManyTopics
from .heartbeats import Heartbeats
from .metrics import ChannelMetrics, ChannelState
from .outbox import Course, SlowConsumerRule, Verdict
from .ratecap import RateCaps
from .ratelimit import LogThrottle
from .resume import Outcome, Recovery, Step
from .settings import Limits

log = logging.getLogger("wsgateway.channel")

#: Channels whose topic is the user id: a client may only ever see its own user's messages.
PRIVATE_CHANNELS = frozenset({"user"})
REJECTION_LOG_INTERVAL = 10.0
#: Bytes a transport may still hold before a client gets no new write until it drains.
HOLD_BYTES = 65_536
HOLD_RETRY_SECONDS = 0.005
#: Bytes queued for a last or book client past which its waiting updates are merged: as much
#: as a transport may hold before the client gets no new write, i.e. its kernel is not
#: keeping up. Not more: every byte queued is a frame the client reads before a newer value,
#: and before the WebSocket ping it must answer in time (half of max_outbox_bytes, tried
#: first, left a slow reader seconds of stale ticks, and it missed its pong behind them).
CONFLATE_BYTES = HOLD_BYTES


@dataclass(slots=True)
class Joining:
    """What a subscribe asks of the broker before it can be answered (Gateway.subscribe)."""

    #: the topics of the request, as the reply names them
    topics: tuple[str, ...]
    #: topics whose position is known here: the client is a subscriber already
    known: dict[str, Position] = field(default_factory=dict)
    #: topics the client joins through a recovery (resume.py): history or position needed
    pending: list[Recovery] = field(default_factory=list)
    #: topics the client already receives, whose position must be read from the broker
    lookup: list[str] = field(default_factory=list)
    #: the topics this request added to the client: undone when the broker does not answer
    added: list[str] = field(default_factory=list)


class Channel:
    """The connection manager of one channel in this process."""

    def __init__(
        self,
        name: str,
        limits: Limits,
        metrics: ChannelMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.limits = limits
        self.metrics = metrics
        self.private = name in PRIVATE_CHANNELS
        #: stream, last or book (settings.Limits.mode_for)
        self.mode = limits.mode_for(name)
        #: a subscriber to a topic gets its state first (a ``snapshot`` frame), and a client
        #: past the soft bound gets a topic's waiting updates merged (conflation.py)
        self.snapshots = self.conflates = self.mode != "stream"
        self._book = self.mode == "book"
        self._checksums = self._book and limits.checksum
        #: the soft bound: queued bytes past which a last or book client is conflated
        self.soft_bytes = (
            min(CONFLATE_BYTES, limits.max_outbox_bytes // 2)
            if self.conflates
            else limits.max_outbox_bytes
        )
        self.draining = False
        self._clock = clock
        self._wall_clock = wall_clock  # the clock of Update.ts, for delivery latency
        self._connections: set[Connection] = set()
        self._topics: dict[str, set[Connection]] = {}
        self._wildcard: set[Connection] = set()
        # Topics held by all connections, kept as they change: a scrape must not walk
        # every connection (tests/test_channel_state.py checks it against a recount).
        self._subscriptions = 0
        self.admission = Admission(name, limits, clock=clock)
        self._log_throttle = LogThrottle(REJECTION_LOG_INTERVAL)
        self._dirty: list[Connection] = []
        # Publish times of the updates queued this loop turn: the flush observes their
        # delivery latency once per update, not once per delivery.
        self._queued_ts: list[float] = []
        self._flush_handle: asyncio.Handle | None = None
        # Connections whose transport still holds more than HOLD_BYTES: their frames wait in
        # the outbox, retried every HOLD_RETRY_SECONDS until the kernel takes them.
        self._held: set[Connection] = set()
        self._retry_handle: asyncio.TimerHandle | None = None
        self._rule = SlowConsumerRule(limits.max_outbox_bytes, limits.slow_consumer_grace)
        #: Bytes of update frames queued since the last flush, and how many the relay may
        #: queue before it flushes and yields (:meth:`pace`): a burst goes out in slices.
        self.turn_bytes = 0
        self.slice_bytes = self._rule.slice_bytes
        # Connections over max_outbox_bytes, judged every HOLD_RETRY_SECONDS until they
        # catch up or are cut, with their last measurement; the relay waits while one of
        # them is on course to catch up (outbox.py).
        self._lagging: dict[Connection, Course] = {}
        #: the last position relayed per topic (continuity.py): the relay checks each
        #: update against it; a subscribe to a topic it knows needs no broker round trip
        self.positions = TopicPositions(limits.topic_ttl, clock)
        # Clients joining a topic through a recovery (resume.py), by topic: pending ones
        # buffer live updates, catching-up ones skip what they already have.
        self._recovering: dict[str, dict[Connection, Recovery]] = {}
        # Receivers with a max_rate, apart from _topics: the fan-out of every other receiver
        # pays nothing for them (ratecap.py).
        self._caps = RateCaps(clock, self._book, self._send_held, self.metrics.conflated.inc)
        # Connections that asked for position heartbeats, and their timers (heartbeats.py).
        self.heartbeats = Heartbeats(self._send_heartbeat)

    # -- admission ------------------------------------------------------------------------

    def admit(self, address: str) -> None:
        """Reserve a place for a new connection from ``address`` or raise :class:`Rejected`.

        Checked before the WebSocket upgrade. A reservation is released by
        :meth:`release` (upgrade failed) or taken over by :meth:`open`.
        """
        try:
            if self.draining:
                raise Draining("the gateway is draining; reconnect to another node")
            self.admission.admit(address, len(self._connections))
        except Rejected as rejection:
            if rejection.limit is not None:
                self.metrics.rate_limit_hits[rejection.limit].inc()
            self.reject(rejection, address)
            raise

    def reject(self, rejection: Rejected, address: str | None = None) -> None:
        """Count a refused upgrade and log it, at most one line per reason per interval
        (naming the client address of the refusal that is logged)."""
        self.metrics.rejected[rejection.reason].inc()
        more = self._log_throttle.note(rejection.reason, self._clock())
        if more is not None:
            log.warning(
                "rejected connection on %s from %s: %s: %s%s",
                self.name,
                address or "an unknown address",
                rejection.reason,
                rejection.message,
                more,
            )

    def release(self, address: str) -> None:
        """Give back a reservation whose upgrade did not complete."""
        self.admission.release(address)

    def open(
        self,
        transport: Transport,
        closer: Closer,
        address: str,
        user: str | None = None,
        fd: int = -1,
    ) -> Connection:
        """Turn a reservation into a live connection. ``fd``: the socket under a plain TCP
        transport, which the flush may write directly (-1: always go through the transport)."""
        self.admission.opened()
        conn = Connection(
            transport,
            closer,
            address=address,
            user=user,
            messages_per_second=self.limits.messages_per_second,
            now=self._clock(),
            fd=fd,
        )
        self._connections.add(conn)
        self.metrics.connections.inc()
        if self.limits.position_heartbeat:
            # The channel's default, until the client asks for another interval (or 0).
            self.heartbeats.set(conn, self.limits.position_heartbeat)
        return conn

    def remove(self, conn: Connection, reason: str) -> None:
        """Forget ``conn`` entirely; counts what it could not be sent. Idempotent."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        self._held.discard(conn)
        self._lagging.pop(conn, None)
        if self.heartbeats:
            self.heartbeats.stop(conn)
        self.admission.closed(conn.address)
        self._drop_subscriptions(conn, tuple(conn.topics))
        if conn.outbox:
            lost = "shutdown" if reason == "shutdown" else "connection_lost"
            self.metrics.failed[lost].inc(_updates(conn, len(conn.outbox)))
            conn.outbox.clear()
            conn.conflating = None
            conn.outbox_bytes = 0
        conn.closing = True
        conn.end_reason = reason
        self.metrics.disconnects[reason].inc()

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(
        self,
        conn: Connection,
        topics: Iterable[str],
        since: Mapping[str, Position] | None = None,
        max_rate: float | None = None,
    ) -> Joining:
        """Add ``topics`` to ``conn``; raise ClientError when they are not allowed.

        A topic whose position this process knows, asked without ``since``, is joined at
        once (``Joining.known``), unless the reply must wait for the broker anyway. The others
        join through a :class:`Recovery` that buffers their live updates until
        :meth:`complete` hands it the broker's answer (``Joining.pending``).
        """
        topics = tuple(dict.fromkeys(topics))
        if conn.closing:
            # A frame read after the channel let go of this client (slow consumer, expiry):
            # subscribing it would leave it in the per-topic sets for good.
            return Joining(topics)
        if self.private:
            own = self._own_topic(conn, topics)
            if since is not None:
                since = {own[0]: since[own[0]]} if own[0] in since else None
            topics = own
        new = [topic for topic in topics if topic not in conn.topics]
        if len(conn.topics) + len(new) > self.limits.max_topics:
            raise TooManyTopics(f"at most {self.limits.max_topics} topics per connection")
        if max_rate is not None:
            self._set_caps(conn, topics, max_rate)
        joining = Joining(topics, added=new)
        since = since or {}
        for topic in topics:
            if topic == protocol.WILDCARD:
                continue
            if topic not in new or conn.all_topics:
                # Already received: a replay would send updates twice. Its position only.
                known = self.positions.get(topic)
                if known is not None:
                    joining.known[topic] = known
                else:
                    joining.lookup.append(topic)
        for topic in new:
            conn.add_topic(topic)
            self._subscriptions += 1
            if topic == protocol.WILDCARD:
                self._subscribe_all(conn)
                continue
            if conn.all_topics:
                continue
            asked = since.get(topic)
            known = self.positions.get(topic)
            # A last or book topic is joined with its snapshot, read from the broker.
            if asked is None and known is not None and not self.snapshots:
                joining.known[topic] = known
            else:
                self._start_recovery(joining, Recovery(conn, topic, asked))
        immediate = [t for t in joining.known if t in new]
        if joining.pending or joining.lookup:
            # The reply waits for the broker: updates of the topics known here must not
            # reach the client before it either. They join through a recovery too, one
            # whose answer is their known position (Gateway.subscribe asks nothing for it).
            for topic in immediate:
                self._start_recovery(joining, Recovery(conn, topic, None))
        else:
            for topic in immediate:
                self._receive(conn, topic)
        return joining

    def _start_recovery(self, joining: Joining, recovery: Recovery) -> None:
        self._recovering.setdefault(recovery.topic, {})[recovery.conn] = recovery
        joining.pending.append(recovery)

    def complete(self, recovery: Recovery, history: History) -> Outcome | None:
        """Merge the broker's answer into a pending recovery (resume.py) and queue the
        missed and buffered updates for its client; the caller sends the reply first.
        None when the client left the topic meanwhile."""
        recoveries = self._recovering.get(recovery.topic)
        conn = recovery.conn
        if recoveries is None or recoveries.get(conn) is not recovery:
            return None
        topic = recovery.topic
        outcome = recovery.merge(
            history, self._update_frame, lambda snapshot: self._snapshot_frame(topic, snapshot)
        )
        top = outcome.top
        relayed = self.positions.get(topic)
        if relayed is None:
            # Not relayed here lately: check the next update against what the broker said.
            self.positions.learn(topic, top)
            if top.seq == 0:
                # Nothing numbered before the broker answered: nothing on its way either.
                self._join(conn, topic, recoveries)
        elif relayed.epoch == top.epoch and relayed.seq >= top.seq:
            self._join(conn, topic, recoveries)
        return outcome

    def _join(self, conn: Connection, topic: str, recoveries: dict[Connection, Recovery]) -> None:
        del recoveries[conn]
        if not recoveries:
            del self._recovering[topic]
        self._receive(conn, topic)

    def _receive(self, conn: Connection, topic: str) -> None:
        """Make ``conn`` a receiver of ``topic``'s live updates: at the rate its max_rate
        allows, or as they come."""
        caps = conn.caps
        interval = caps.get(topic) if caps else None
        if interval is None:
            self._topics.setdefault(topic, set()).add(conn)
        else:
            self._caps.add(conn, topic, interval)

    def _set_caps(self, conn: Connection, topics: tuple[str, ...], max_rate: float) -> None:
        """Apply a subscribe's ``max_rate`` (0: none) to its topics, held ones included."""
        if not self.conflates:
            raise BadMessage(
                f'"max_rate" is for channels in last or book mode; {self.name} is in '
                f"{self.mode} mode, whose updates are never merged"
            )
        if protocol.WILDCARD in topics:
            raise BadMessage('"max_rate" applies to named topics, not "*"')
        caps = conn.caps if conn.caps is not None else {}
        for topic in topics:
            receiving = self._is_receiving(conn, topic)
            if receiving:
                self._stop_receiving(conn, topic, release=True)
            if max_rate:
                caps[topic] = 1.0 / max_rate
            else:
                caps.pop(topic, None)
            if receiving:
                self._receive(conn, topic)
        conn.caps = caps or None

    def _is_receiving(self, conn: Connection, topic: str) -> bool:
        receivers = self._topics.get(topic)
        if receivers is not None and conn in receivers:
            return True
        return self._caps.holds(conn, topic)

    def _stop_receiving(self, conn: Connection, topic: str, release: bool = False) -> None:
        """Take ``conn`` off ``topic``'s receivers; ``release``: what its max_rate held
        back is sent first (it keeps receiving the topic, at another rate)."""
        subscribers = self._topics.get(topic)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._topics[topic]  # no per-topic state outlives its last subscriber
        self._caps.remove(conn, topic, release)

    def abandon(self, conn: Connection, joining: Joining) -> None:
        """Undo every subscription a request added, when the broker could not answer it:
        all or nothing, as the client is told (its topics known here included)."""
        self._drop_subscriptions(conn, [t for t in joining.added if t in conn.topics])

    def unsubscribe(self, conn: Connection, topics: Iterable[str]) -> tuple[str, ...]:
        topics = tuple(topics)
        if self.private:
            topics = self._own_topic(conn, topics)
        self._drop_subscriptions(conn, [t for t in topics if t in conn.topics])
        return topics

    def _own_topic(self, conn: Connection, topics: tuple[str, ...]) -> tuple[str, ...]:
        # On a private channel "*" means "all of mine", which is exactly one topic.
        own = conn.user
        if own is None or any(topic not in (own, protocol.WILDCARD) for topic in topics):
            raise ForbiddenTopic(
                f"on the {self.name} channel you may subscribe only to your own user id"
            )
        return (own,)

    def _subscribe_all(self, conn: Connection) -> None:
        conn.all_topics = True
        self._wildcard.add(conn)
        for topic in conn.topics:
            self._discard(topic, conn)

    def _drop_subscriptions(self, conn: Connection, topics: Iterable[str]) -> None:
        for topic in topics:
            if not conn.discard_topic(topic):
                continue  # named twice, or never held
            self._subscriptions -= 1
            if topic == protocol.WILDCARD:
                conn.all_topics = False
                self._wildcard.discard(conn)
                for kept in conn.topics:
                    self._receive(conn, kept)
            else:
                self._discard(topic, conn)

    def _discard(self, topic: str, conn: Connection) -> None:
        if self._recovering:
            recoveries = self._recovering.get(topic)
            if recoveries is not None and conn in recoveries:
                del recoveries[conn]
                if not recoveries:
                    del self._recovering[topic]
        self._stop_receiving(conn, topic)
        if conn.caps is not None and not conn.all_topics:
            conn.caps.pop(topic, None)
            conn.caps = conn.caps or None  # no dict kept for a connection without caps

    # -- heartbeats ---------------------------------------------------------------------------

    def set_heartbeat(self, conn: Connection, seconds: int) -> None:
        """Send ``conn`` a heartbeat every ``seconds`` from now on (0: none)."""
        self.heartbeats.set(conn, seconds)

    def _send_heartbeat(self, conn: Connection, n: int) -> None:
        payload = protocol.heartbeat(n, self._wall_clock(), self.heartbeat_positions(conn))
        self.send(conn, payload, "heartbeat")

    def heartbeat_positions(self, conn: Connection) -> dict[str, dict[str, object]]:
        """The position of each topic ``conn`` receives, for its heartbeat.

        Never ahead of what the connection was sent: ``positions`` advances only in
        :meth:`broadcast` (and :meth:`reset_topic`), which queues the update (the reset) for
        every subscriber in ``_topics`` in the same synchronous call; a heartbeat is built
        and queued later, behind those frames in the same outbox, which is written in order.
        A position read from the broker rather than relayed (``learn``) is not firm and is
        not reported: updates up to it may still be on their way. A topic the connection is
        still joining (a resume or a broker lookup in progress: in ``_recovering``, not yet
        in ``_topics``) is left out: its replay is not queued yet. A connection holding
        ``"*"`` gets no topics: it receives every update of the channel, and a named topic
        it holds beside ``"*"`` may never have been told a position.
        """
        if conn.all_topics:
            return {}
        positions: dict[str, dict[str, object]] = {}
        subscribers = self._topics
        for topic in conn.topics:
            receivers = subscribers.get(topic)
            if receivers is None or conn not in receivers:
                caps = self._caps
                if not caps.holds(conn, topic) or caps.holding_back(conn, topic):
                    continue  # joining, or updates held back for its max_rate
            position = self.positions.get(topic)
            if position is not None:
                positions[topic] = {"seq": position.seq, "epoch": position.epoch}
        return positions

    # -- sending ----------------------------------------------------------------------------

    def send(self, conn: Connection, payload: bytes, kind: str) -> None:
        """Queue one server frame that is not an update for ``conn``, in order with its
        updates; ``kind`` is its word in metrics.FRAME_KINDS (``reply``, ``error``)."""
        self.send_frame(conn, protocol.text_frame(payload), kind)

    def send_frame(self, conn: Connection, frame: bytes, kind: str) -> None:
        """Queue one ready-made frame of ``kind`` (a ``pong``) for ``conn``; like every
        reply, it counts against ``max_outbox_bytes``. A ``snapshot`` is never refused by
        the hard cap (see :meth:`send_update`)."""
        if not conn.closing:
            self._enqueue([conn], frame, update=False, capped=kind != "snapshot")
            _mark(conn, kind)

    def catch_up(self, conn: Connection, topic: str, outcome: Outcome) -> None:
        """Queue what a client joining ``topic`` gets after the reply: the snapshot, then
        the missed and buffered updates (through its max_rate, if it has one)."""
        if outcome.snapshot is not None:
            self.send_frame(conn, outcome.snapshot, "snapshot")
        caps = self._caps
        capped = caps and caps.holds(conn, topic)
        for update, frame in outcome.updates:
            if not capped or caps.offer_to(conn, update, frame):
                self.send_update(conn, frame)

    def send_update(self, conn: Connection, frame: bytes) -> None:
        """Queue one replayed update frame for ``conn`` alone.

        Replays and snapshots are queued whole, past the hard cap if need be: they are
        bounded (``max_replay`` updates, ``max_topics`` books of ``max_book_levels``), and
        refusing them would refuse them again on every retry, so a client with more to
        catch up on than twice ``max_outbox_bytes`` could never resume. The client then lags
        as any other, and is cut (1013) only if it does not drain in its grace (outbox.py).
        """
        if not conn.closing:
            self._enqueue([conn], frame, capped=False)

    def broadcast(self, update: Update) -> int:
        """Fan ``update`` out to its subscribers; returns how many it was queued for."""
        started = time.perf_counter()
        self.metrics.published.inc()
        topic = update.topic
        self.positions.advance(topic, update.epoch, update.seq)
        frame = self._update_frame(update)
        subscribers = self._topics.get(topic)
        merge = update if self.conflates else None
        queued = self._enqueue(subscribers, frame, merge=merge) if subscribers else 0
        if self._wildcard:
            queued += self._enqueue(self._wildcard, frame, merge=merge)
        if self._recovering and topic in self._recovering:
            queued += self._offer(self._recovering[topic], update, frame)
        if self._caps and topic in self._caps:
            due = self._caps.offer(update, frame)
            if due:
                queued += self._enqueue(due, frame, merge=update)
        if self._checksums:
            self.metrics.checksums.inc()
        if queued:
            self._queued_ts.append(update.ts)
            self.turn_bytes += len(frame)
        metrics = self.metrics
        metrics.message_size.observe(len(frame))
        metrics.broadcast_duration.observe(time.perf_counter() - started)
        return queued

    def _update_frame(self, update: Update) -> bytes:
        # The first update of an epoch names it: a client that subscribed before the topic
        # had any state learns the epoch it needs to resume (protocol.md).
        epoch = update.epoch if update.seq == 1 and update.epoch else None
        return protocol.text_frame(
            protocol.update(self.name, update.topic, update.seq, update.ts, update.data, epoch)
        )

    def _send_held(self, conn: Connection, pending: Pending) -> None:
        """Queue what a max_rate held back for ``conn`` (ratecap.py)."""
        if not conn.closing:
            # (not merged again when it lags: its range starts before pending.update)
            self._enqueue([conn], pending.frame(self.name))
            self._queued_ts.append(pending.update.ts)

    def _snapshot_frame(self, topic: str, snapshot: Snapshot) -> bytes:
        position = snapshot.position
        return protocol.text_frame(
            protocol.snapshot(
                self.name, topic, position.seq, position.epoch, snapshot.ts, snapshot.data
            )
        )

    def _offer(self, recoveries: dict[Connection, Recovery], update: Update, frame: bytes) -> int:
        """Hand a live update to the clients joining its topic; those past their recovery
        become ordinary subscribers with this update."""
        joined = [conn for conn, recovery in recoveries.items() if recovery.offer(update, frame)]
        for conn in joined:
            self._join(conn, update.topic, recoveries)
        caps = self._caps
        if caps and update.topic in caps:  # a joiner with a max_rate gets it through its cap
            topic = update.topic
            joined = [
                c for c in joined if not caps.holds(c, topic) or caps.offer_to(c, update, frame)
            ]
        return self._enqueue(joined, frame) if joined else 0

    def reset_topic(self, topic: str, position: Position) -> int:
        """Tell every subscriber of ``topic`` that its continuity broke: it restarts at
        ``position`` (a new epoch, or updates lost for good). Returns how many were told."""
        self.positions.reset(topic, position)
        payload = protocol.reset(self.name, topic, position.epoch, position.seq)
        frame = protocol.text_frame(payload)
        told: list[Connection] = list(self._topics.get(topic, ()))
        told.extend(self._wildcard)
        told.extend(self._caps.release_all(topic))  # what they hold back comes first
        recoveries = self._recovering.get(topic)
        if recoveries:
            for conn, recovery in list(recoveries.items()):
                if recovery.step is Step.PENDING:
                    recovery.reset(position)  # its reply will carry the new position
                else:
                    self._join(conn, topic, recoveries)
                    told.append(conn)
        if told:
            self._enqueue(told, frame, update=False)
            for conn in told:
                _mark(conn, "reset")
            self.metrics.resets.inc(len(told))
        return len(told)

    def has_subscribers(self, topic: str) -> bool:
        """True when a client here receives ``topic`` (or is joining it)."""
        return (
            bool(self._wildcard)
            or topic in self._topics
            or topic in self._recovering
            or topic in self._caps
        )

    def expire_positions(self) -> int:
        """Forget the positions of topics idle past topic_ttl without subscribers here."""
        if self._wildcard:
            return self.positions.expire(())  # every topic is subscribed: keep by age alone
        return self.positions.expire(_Subscribed(self))

    def _enqueue(
        self,
        connections: Collection[Connection],
        frame: bytes,
        update: bool = True,
        merge: Update | None = None,
        capped: bool = True,
    ) -> int:
        # The hot loop: runs once per delivery, so it does as little as it can. A frame that
        # is not an update is marked by the caller once queued (_mark), never here. ``merge``:
        # the update of ``frame``, on a channel that conflates (last, book).
        size = len(frame)
        budget = self.limits.max_outbox_bytes - size
        soft = self.soft_bytes - size  # = budget on a stream channel
        dirty = self._dirty
        slow: list[Connection] = []
        lagging: list[Connection] = []
        if not update:
            for conn in connections:
                if conn.conflating is not None:  # nothing more merges into what precedes
                    self._seal(conn)
        for conn in connections:
            item: object = frame
            # Re-read the real buffer only near the limit (the cached backlog may be stale).
            if conn.outbox_bytes + conn.backlog > soft:
                if merge is not None:
                    entry = self._conflate(conn, merge, frame)
                    if entry is True:
                        continue  # merged into the topic's waiting entry
                    if entry is not None:
                        item = entry
                if (
                    conn.outbox_bytes + conn.backlog > budget
                    and (pending := conn.pending_bytes()) > budget
                ):
                    # Past the limit the client lags and is judged over time; only a frame
                    # that would take it past the hard cap cuts it now (outbox.py).
                    if capped and not self._rule.admits(pending, size):
                        slow.append(conn)
                        continue
                    if conn.lagging_since is None:
                        lagging.append(conn)
            outbox = conn.outbox
            if not outbox:  # first frame this turn: the flush must visit this connection
                dirty.append(conn)
            outbox.append(item)
            conn.outbox_bytes += size
        if dirty and self._flush_handle is None:
            loop = asyncio.get_running_loop()
            delay = self.limits.write_delay
            # Default: flush at the end of this loop turn. A write delay trades a few ms of
            # latency for fewer, larger writes under bursts.
            self._flush_handle = (
                loop.call_later(delay, self.flush) if delay else loop.call_soon(self.flush)
            )
        queued = len(connections) - len(slow)  # before the drops shrink `connections`
        for conn in slow:
            self._drop_slow_consumer(conn, unsent=1 if update else 0)
        if lagging:
            self._start_lagging(lagging)
        return queued

    def _conflate(self, conn: Connection, update: Update, frame: bytes) -> Pending | bool | None:
        """A client past the soft bound on a last or book channel: fold ``update`` into the
        topic's entry waiting in its outbox (True), or open one that takes the frame's place
        (the entry), or None when its real queue is under the bound after all (the cached
        backlog was stale): the frame is queued as it is."""
        entries = conn.conflating
        if entries is None:
            if conn.pending_bytes() <= self.soft_bytes - len(frame):
                return None
            conn.conflating = entries = {}
        else:
            entry = entries.get(update.topic)
            if entry is not None and entry.merge(update, frame):
                self.metrics.conflated.inc()
                return True
        entry = entries[update.topic] = Pending(update, frame, self._book)
        return entry

    def _seal(self, conn: Connection) -> None:
        """Make the conflation entries of ``conn``'s outbox into frames, in place: it is
        about to be written, or a frame that is not an update is queued behind them."""
        conn.conflating = None
        name = self.name
        outbox = conn.outbox
        for i, item in enumerate(outbox):
            if type(item) is Pending:
                outbox[i] = item.frame(name)

    def _start_lagging(self, connections: list[Connection]) -> None:
        now = self._clock()
        for conn in connections:
            if not conn.closing:
                conn.lagging_since = now
                self._lagging[conn] = Course(now, conn.taken_bytes())
        self._schedule_retry()

    def _judge_lagging(self) -> None:
        """Let lagging clients that caught up go; cut those whose grace has run out; measure
        the others: is each still on course to catch up in time (worth waiting for)?"""
        now = self._clock()
        rule = self._rule
        lagging = self._lagging
        for conn, course in list(lagging.items()):
            pending = conn.pending_bytes()
            since = now if conn.lagging_since is None else conn.lagging_since
            verdict = rule.judge(pending, since, now)
            if verdict is Verdict.KEEP:
                conn.lagging_since = None
                del lagging[conn]
            elif verdict is Verdict.CUT:
                del lagging[conn]
                self._drop_slow_consumer(conn, unsent=0)
            else:
                lagging[conn] = rule.follow(course, pending, conn.taken_bytes(), since, now)

    @property
    def lagging(self) -> bool:
        """True while a client is over max_outbox_bytes (until it catches up or is cut)."""
        return bool(self._lagging)

    @property
    def waiting(self) -> bool:
        """True while a lagging client is on course to catch up: the relay waits
        (:meth:`pace`). A stopped or trickling reader does not hold it."""
        return any(course.wait for course in self._lagging.values())

    async def pace(self) -> None:
        """Between slices of a burst: write what is queued, let the loop run (readers,
        other channels, publishers), then wait while a lagging client is on course to
        catch up.

        The wait is what turns a burst's pressure back on the publisher (the broker's queue
        is bounded) instead of on the readers. It is bounded: a client is waited for only
        while it drains fast enough to be back under half of ``max_outbox_bytes`` within
        ``slow_consumer_grace``, and never past its grace. A reader that stops holds the
        relay (every channel's feed) for one check, ``HOLD_RETRY_SECONDS``, not its grace.
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # the flush happens here, now
        self.flush()
        await asyncio.sleep(0)
        while self._lagging:
            self._judge_lagging()
            if not self.waiting:
                break
            await asyncio.sleep(HOLD_RETRY_SECONDS)

    def flush(self) -> None:
        """Write every dirty outbox with one write per connection. Runs once per loop turn."""
        self._flush_handle = None
        self.turn_bytes = 0
        dirty, self._dirty = self._dirty, []
        self._write_outboxes(dirty)
        if self._queued_ts:
            written_at = self._wall_clock()
            observe = self.metrics.delivery_latency.observe
            for published_at in self._queued_ts:
                observe(max(0.0, written_at - published_at))
            self._queued_ts.clear()

    def _retry_held(self) -> None:
        self._retry_handle = None
        held, self._held = self._held, set()
        self._write_outboxes(held)
        if self._lagging:
            self._judge_lagging()
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if (self._held or self._lagging) and self._retry_handle is None:
            self._retry_handle = asyncio.get_running_loop().call_later(
                HOLD_RETRY_SECONDS, self._retry_held
            )

    def _write_outboxes(self, connections: Iterable[Connection]) -> None:
        sent = lost = 0  # update frames
        others: list[str] = []  # the kinds of the other frames written
        held = self._held
        limit = self.limits.max_outbox_bytes
        lagging: list[Connection] = []
        for conn in connections:
            outbox = conn.outbox
            count = len(outbox)
            if not count:  # emptied by a close since it was queued, or listed twice
                continue
            transport = conn.transport
            if conn.backlog > HOLD_BYTES:
                conn.backlog = transport.get_write_buffer_size()
                if conn.backlog > HOLD_BYTES and not transport.is_closing():
                    # The kernel is not taking this client's bytes. Keep its frames as they
                    # are, shared with every other subscriber, rather than join them into a
                    # copy of its own: a lagging client then costs a list of references
                    # until it catches up or is judged a slow consumer (outbox.py).
                    held.add(conn)
                    continue
            if conn.conflating is not None:
                self._seal(conn)
            data = outbox[0] if count == 1 else b"".join(outbox)
            outbox.clear()
            conn.outbox_bytes = 0
            frames = count  # every frame of the write, for the access log (frames_out)
            mixed = conn.others
            if mixed is not None:  # replies among the updates (rare): split them off
                conn.others = None
                count -= len(mixed)
                others += mixed  # taken back below if the write fails
            # A transport that is not closing still owns conn.fd: the direct write below
            # cannot reach a descriptor the kernel has since given to another socket.
            if transport.is_closing():
                lost += count
                if mixed is not None:
                    del others[-len(mixed) :]
                continue
            written = 0
            fd = conn.fd
            if fd >= 0 and not transport.get_write_buffer_size():
                # Nothing is queued ahead of us, so the bytes may go straight to the socket:
                # the same write(2) without the transport's bookkeeping, ~0.4 µs (6%) less
                # server CPU per paced delivery on uvloop (benchmarks/README.md). What the
                # kernel does not take goes through the transport, which queues it in order.
                try:
                    written = os_write(fd, data)
                except OSError:  # full (EAGAIN) or a dead peer: the transport finds out
                    written = 0
                if written == len(data):
                    if conn.lagging_since is not None:
                        conn.written += written
                    conn.backlog = 0
                    conn.frames_out += frames
                    sent += count
                    continue
            try:
                transport.write(data[written:] if written else data)
            except Exception:  # a transport that fails to write: the peer is gone
                log.debug("write to a client of %s failed", self.name, exc_info=True)
                lost += count
                if mixed is not None:
                    del others[-len(mixed) :]
                self._fail(conn, "send_failed", 1011, "send failed")
                continue
            conn.backlog = backlog = transport.get_write_buffer_size()
            if conn.lagging_since is not None:
                conn.written += len(data)  # counted only while it lags: what outbox.py measures
            elif backlog > limit:
                lagging.append(conn)  # the kernel refused more than the limit: it lags now
            conn.frames_out += frames  # one add per write, however many frames it carries
            sent += count
        if lagging:
            self._start_lagging(lagging)
        if sent:
            self.metrics.updates_sent.inc(sent)
        if others:
            self._count_others(others)
        if lost:
            self.metrics.failed["connection_lost"].inc(lost)
        if held:
            self._schedule_retry()

    def _drop_slow_consumer(self, conn: Connection, unsent: int = 1) -> None:
        if conn.closing:
            return
        # Everything still in the outbox is lost to this client, and so is the frame that
        # did not fit (``unsent``): count them, free them, and close with 1013.
        self.metrics.failed["slow_consumer"].inc(_updates(conn, len(conn.outbox)) + unsent)
        conn.outbox.clear()
        conn.conflating = None
        conn.outbox_bytes = 0
        self.metrics.slow_consumers.inc()
        self._fail(conn, "slow_consumer", 1013, "slow consumer")

    def _fail(self, conn: Connection, kind: str, code: int, reason: str) -> None:
        self.metrics.error(kind)
        self._close(conn, code, reason, kind if kind == "slow_consumer" else "internal_error")

    def _close(self, conn: Connection, code: int, message: str, reason: str) -> None:
        conn.closing = True
        self.remove(conn, reason)
        conn.closer(code, message)

    def close(self, conn: Connection, code: int, message: str, reason: str) -> None:
        """Write what ``conn`` has queued, then close it with ``code``."""
        if conn.closing:
            return
        self._write_now(conn)
        self._close(conn, code, message, reason)

    def _write_now(self, conn: Connection) -> None:
        if conn.conflating is not None:
            self._seal(conn)
        outbox, conn.outbox, conn.outbox_bytes = conn.outbox, [], 0
        if not outbox:
            return
        mixed = conn.others
        updates = _updates(conn, len(outbox))
        if conn.transport.is_closing():
            self.metrics.failed["connection_lost"].inc(updates)
            return
        try:
            conn.transport.write(b"".join(outbox))
        except Exception:  # the peer is gone; closing goes on (shutdown must reach everyone)
            log.debug("final write to a client of %s failed", self.name, exc_info=True)
            self.metrics.failed["connection_lost"].inc(updates)
            self.metrics.error("send_failed")
            return
        conn.frames_out += len(outbox)
        self.metrics.updates_sent.inc(updates)
        if mixed:
            self._count_others(mixed)

    def _count_others(self, kinds: Iterable[str]) -> None:
        frames = self.metrics.frames_sent
        for kind in kinds:
            frames[kind].inc()

    def close_all(self, code: int, message: str, reason: str) -> int:
        """Close every connection (shutdown, drain); returns how many there were."""
        connections = list(self._connections)
        for conn in connections:
            self.close(conn, code, message, reason)
        return len(connections)

    # -- introspection ------------------------------------------------------------------------

    def state(self) -> ChannelState:
        """Live figures for the scrape-time collector."""
        # Only a connection with frames in its outbox or bytes left in its transport at its
        # last write holds any: the rest cost two attribute reads, not two calls (a scrape
        # at 10,000 connections, benchmarks/scrape.py).
        pending = [c.pending_bytes() for c in self._connections if c.outbox_bytes or c.backlog]
        return ChannelState(
            channel=self.name,
            connections=len(self._connections),
            subscriptions=self._subscriptions,
            topics=len(self._topics),
            outbox_bytes=sum(pending),
            outbox_largest_bytes=max(pending, default=0),
        )

    def footprint(self) -> dict[str, int]:
        """Sizes of every per-connection and per-topic structure (all 0 when idle)."""
        return {
            "connections": len(self._connections),
            "admitting": self.admission.admitting,
            "topics": len(self._topics),
            "wildcard": len(self._wildcard),
            "addresses": self.admission.addresses(),
            "dirty": len(self._dirty),
            "held": len(self._held),
            "lagging": len(self._lagging),
            "recovering": sum(len(r) for r in self._recovering.values()),
            "capped": len(self._caps),
            "heartbeats": len(self.heartbeats),
        }

    def admission_window(self) -> int:
        """Admissions of the last 60 s, over all client addresses."""
        return self.admission.recent()

    @property
    def connections(self) -> frozenset[Connection]:
        return frozenset(self._connections)


def _mark(conn: Connection, kind: str) -> None:
    """Note a frame of ``kind`` (not an update) just queued for ``conn``, unless the queueing
    dropped it (a slow consumer, closed)."""
    if conn.closing:
        return
    if conn.others is None:
        conn.others = [kind]
    else:
        conn.others.append(kind)


def _updates(conn: Connection, frames: int) -> int:
    """How many of the ``frames`` in ``conn``'s outbox are updates; forgets the others, whose
    outbox is being emptied."""
    others = conn.others
    if others is None:
        return frames
    conn.others = None
    return frames - len(others)


class _Subscribed:
    """``topic in _Subscribed(channel)``: the topic has a subscriber or a joining client."""

    __slots__ = ("_channel",)

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def __contains__(self, topic: object) -> bool:
        channel = self._channel
        return topic in channel._topics or topic in channel._recovering or topic in channel._caps
