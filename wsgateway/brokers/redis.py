"""The Redis broker: processes and nodes share numbering, history and live delivery.

Layout and framing are in ``redis_codec.py``; the Lua scripts in ``scripts/``. In short:

- **Publish**: one Lua script call (``scripts/publish.lua``, run by EVALSHA) numbers, stores
  and announces a whole batch atomically: per topic it reads or creates the epoch in the
  meta hash, counts ``seq`` on, appends each update to the topic's capped history stream
  (``XADD MAXLEN ~ history_size``, id ``<seq>-0``), refreshes both TTLs, and then PUBLISHes
  one pub/sub message per gateway channel carrying all of that channel's updates. Redis
  work per message is therefore a few commands whatever the number of clients or processes,
  and there is no per-client key. redis-py's automatic retries are off (``Retry(..., 0)``):
  a script re-run after a lost reply would publish twice. A failed publish raises
  ConnectionError (the gateway answers 503); its outcome is then unknown only if the
  connection broke after the script was sent.
- **Large batches are split** into script calls of ``CHUNK_MESSAGES`` (1,000), sent one
  after the other: a publish of 10,000 messages (protocol.MAX_PUBLISH_BATCH) in one script
  kept Redis busy ~190 ms on the 2-core development host, stalling every node's publishes
  and probes meanwhile; a chunk takes ~20 ms. The price: such a batch is atomic per chunk,
  not whole. If a chunk fails after earlier ones succeeded, publish raises
  :class:`PartialPublish` (a ConnectionError) saying how many of the first messages were
  published; nothing is ever re-sent by the broker. A batch of up to 1,000 is one atomic
  script call.
- **Live delivery**: ONE pub/sub connection per process, subscribed to
  ``wsg:updates:<channel>`` for every configured channel (per channel, not per topic: the
  relay filters topics in memory, so no SUBSCRIBE traffic follows the clients' topic churn
  and there is no per-topic subscription state to resync), plus ``wsg:probe:<node id>``.
  One reader task only decodes and hands batches over (handoff.py: never blocks; on
  overflow it drops and owes the relay a RESYNC).
- **Reader discipline**: the pub/sub connection is driven directly (send SUBSCRIBE, wait for
  every confirmation, read), not through redis-py's PubSub, which reconnects and
  resubscribes silently. Every call has a timeout; TCP keepalive is on. Every
  ``probe_interval`` a nonce is PUBLISHed on the probe channel and must come back within
  ``probe_timeout``, else the subscription is deaf: it is counted and rebuilt. Any failure
  tears the connection down and a reconnect loop with capped backoff builds a new one; after
  every re-subscription (not the first) the relay gets RESYNC. ``connected`` is True only
  while the subscription is confirmed live.
- **Node records** (``put_node``/``nodes``): each record is a string key
  ``wsg:{nodes}:<id>`` with its own TTL (Redis expires it: no clock comparison between
  nodes), plus the index set ``wsg:{nodes}`` of ids, pruned of expired ids when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .. import book
from ..ratelimit import LogThrottle
from .base import (
    NO_POSITION,
    BrokerStats,
    History,
    HistoryPolicy,
    Message,
    Position,
    Resync,
    Snapshot,
    Update,
    recent,
)
from .handoff import Handoff
from .redis_codec import (
    NODES_KEY,
    book_keys,
    decode_entry,
    decode_updates,
    history_key,
    meta_key,
    milliseconds,
    probe_channel,
    publish_arguments,
    updates_channel,
)

log = logging.getLogger("wsgateway.broker")

#: seconds a Redis command may take (publish script included) before it counts as failed
SOCKET_TIMEOUT = 5.0
#: seconds to open a connection to Redis
CONNECT_TIMEOUT = 2.0
#: seconds between probes of the pub/sub connection, and how long one may take to come back
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 1.0
#: the reconnect loop's backoff while Redis is unreachable (doubling, jittered, capped)
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
#: messages per publish script call: a larger batch is split, so that one publish keeps
#: Redis busy (and every other node waiting) for a bounded time, ~20 ms on a busy 2-core host
CHUNK_MESSAGES = 1000
#: connections for commands; publishers past it wait up to SOCKET_TIMEOUT for one
POOL_CONNECTIONS = 16
#: what the hand-off to the relay holds at most (handoff.py): like the memory broker's queue
QUEUE_BATCHES = 1024
QUEUE_MESSAGES = 100_000
#: TCP keepalive: a dead peer is noticed in about IDLE + INTERVAL * COUNT seconds even when
#: nothing is sent (the probe catches it sooner; keepalive also covers command connections)
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3
DEFAULT_POLICY = HistoryPolicy()
LOG_INTERVAL = 10.0


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("scripts", name).read_text(encoding="utf-8")


def keepalive_options() -> dict[int, int]:
    """TCP keepalive timing, where the platform lets us set it."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


class RedisUnavailable(ConnectionError):
    """Redis could not be reached, timed out or refused a command (the gateway: 503)."""


class PartialPublish(RedisUnavailable):
    """A batch split in several script calls failed after some of them succeeded."""

    def __init__(self, accepted: int, total: int, cause: Exception) -> None:
        self.accepted = accepted
        self.total = total
        super().__init__(
            f"only the first {accepted} of {total} messages were published (the next "
            f"{CHUNK_MESSAGES} may or may not have been): {cause}"
        )


class ProbeFailed(Exception):
    """The probe did not come back through the subscription in time."""


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """redis-py's errors (not builtin ConnectionErrors) and socket errors as
    RedisUnavailable, so callers handle one kind."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class RedisBroker:
    """Numbers, stores and delivers messages through Redis, shared by every process."""

    def __init__(
        self,
        url: str,
        policies: Mapping[str, HistoryPolicy],
        *,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = SOCKET_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        probe_interval: float = PROBE_INTERVAL,
        probe_timeout: float = PROBE_TIMEOUT,
        max_queued_batches: int = QUEUE_BATCHES,
        max_queued_messages: int = QUEUE_MESSAGES,
    ) -> None:
        self._url = url
        self._policies = dict(policies)
        self._clock = clock
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._max_queued = (max_queued_batches, max_queued_messages)
        #: this process's id on the bus (its probe channel)
        self.node = secrets.token_hex(8)
        self._channels = {updates_channel(name).encode(): name for name in self._policies}
        self._probe_channel = probe_channel(self.node).encode()
        self._client: Redis | None = None
        self._pubsub_pool: ConnectionPool | None = None
        self._publish_script: Any = None
        self._history_script: Any = None
        self._snapshot_script: Any = None
        self._nodes_script: Any = None
        self._put_node_script: Any = None
        self._handoff: Handoff | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = False
        self._live = asyncio.Event()
        self._probe_nonce = b""
        self._probe_back: asyncio.Future[None] | None = None
        self._reconnects = 0
        self._publish_errors = 0
        self._probe_failures = 0
        self._log_throttle = LogThrottle(LOG_INTERVAL)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def _connection_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._connect_timeout,
            # No automatic retry anywhere: a publish script re-run after a lost reply would
            # publish twice, and the reconnect loop below decides when to try again.
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            # RESP2: pub/sub messages are plain replies the reader reads itself; redis-py 8
            # defaults to RESP3, whose push messages go to its own PubSub machinery.
            "protocol": 2,
        }
        if not self._url.startswith("unix://"):
            options["socket_keepalive"] = True
            options["socket_keepalive_options"] = keepalive_options()
        return options

    async def start(self) -> None:
        """Connect and subscribe; waits for the subscription up to the connect and socket
        timeouts, and returns even if Redis is unreachable (``connected`` stays False and
        the reconnect loop keeps trying)."""
        options = self._connection_options()
        pool = BlockingConnectionPool.from_url(
            self._url, max_connections=POOL_CONNECTIONS, timeout=self._socket_timeout, **options
        )
        self._client = client = Redis.from_pool(pool)
        self._pubsub_pool = ConnectionPool.from_url(
            self._url, client_name=f"wsg-pubsub-{self.node}", **options
        )
        self._publish_script = client.register_script(_script("publish.lua"))
        self._history_script = client.register_script(_script("history.lua"))
        self._snapshot_script = client.register_script(_script("snapshot.lua"))
        self._nodes_script = client.register_script(_script("nodes.lua"))
        self._put_node_script = client.register_script(_script("put_node.lua"))
        self._handoff = Handoff(*self._max_queued)
        self._live.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="redis broker reader")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._connect_timeout + self._socket_timeout):
                await self._live.wait()

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        self._connected = False
        handoff, self._handoff = self._handoff, None
        if handoff is not None:
            handoff.close()  # ends the relay loop's iteration
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        pool, self._pubsub_pool = self._pubsub_pool, None
        if pool is not None:
            await pool.disconnect()

    # -- live delivery ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Subscribe, listen until the subscription fails, and again, with capped backoff
        while Redis is unreachable."""
        first = True
        delay = BACKOFF_MIN
        while True:
            connection = None
            try:
                connection = await self._subscribe()
                self._connected = True
                if not first:
                    self._reconnects += 1
                    assert self._handoff is not None
                    self._handoff.resync()  # what was published meanwhile went unheard
                first = False
                delay = BACKOFF_MIN
                self._live.set()
                await self._listen(connection)
            except (RedisError, OSError, ProbeFailed) as exc:
                self._log(f"redis pub/sub connection lost or refused: {type(exc).__name__}: {exc}")
            finally:
                self._connected = False
                if connection is not None:
                    await connection.disconnect(nowait=True)
            await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _subscribe(self) -> AbstractConnection:
        """A new pub/sub connection, subscribed to every channel, each confirmed."""
        assert self._pubsub_pool is not None
        # (redis-py leaves these two untyped)
        make = self._pubsub_pool.make_connection
        connection: AbstractConnection = make()  # type: ignore[no-untyped-call]
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            wanted = [*self._channels, self._probe_channel]
            await connection.send_command("SUBSCRIBE", *wanted)
            pending = set(wanted)
            # One SUBSCRIBE command: Redis writes all confirmations before any message.
            while pending:
                reply = await connection.read_response()  # socket_timeout applies
                if isinstance(reply, list) and reply[:1] == [b"subscribe"]:
                    pending.discard(reply[1])
                else:
                    raise RedisError(f"unexpected reply to SUBSCRIBE: {reply!r:.100}")
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return connection

    async def _listen(self, connection: AbstractConnection) -> None:
        """Run the reader and the prober until either fails (its error is raised)."""
        tasks = [
            asyncio.create_task(self._read(connection), name="redis broker pub/sub reader"),
            asyncio.create_task(self._probe(), name="redis broker probe"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended it; neither returns

    async def _read(self, connection: AbstractConnection) -> None:
        """Decode pub/sub messages and hand them over; nothing else, never blocking."""
        handoff = self._handoff
        assert handoff is not None
        channels = self._channels
        # The probe brings a message every probe_interval: silence past this is a dead link.
        silence = self._probe_interval + self._probe_timeout + self._socket_timeout
        while True:
            # (with an explicit timeout, redis-py answers None when it expires)
            reply = await connection.read_response(timeout=silence)
            if reply is None:
                raise TimeoutError(f"nothing from the pub/sub connection in {silence} s")
            if not isinstance(reply, list) or len(reply) != 3 or reply[0] != b"message":
                continue
            _, channel, payload = reply
            name = channels.get(channel)
            if name is not None:
                try:
                    updates = decode_updates(name, payload)
                except (ValueError, UnicodeDecodeError):
                    # Not ours (another program on our channel?) or damaged: what it held
                    # is lost to live delivery, so the relay repairs from the history.
                    handoff.resync()
                    self._log(f"undecodable message on {channel!r}")
                    continue
                if not handoff.put(updates):
                    self._log("the relay is not keeping up: batches dropped, RESYNC owed")
            elif channel == self._probe_channel:
                waiter = self._probe_back
                if payload == self._probe_nonce and waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def _probe(self) -> None:
        """Every probe_interval, a nonce through the bus that must come back in time."""
        client = self._client
        assert client is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._probe_interval)
            self._probe_nonce = secrets.token_bytes(8)
            self._probe_back = waiter = loop.create_future()
            try:
                async with asyncio.timeout(self._probe_timeout + self._socket_timeout):
                    receivers = await client.publish(self._probe_channel, self._probe_nonce)
                    if receivers == 0:  # the server has no subscription of ours at all
                        raise ProbeFailed("the probe channel has no subscriber")
                async with asyncio.timeout(self._probe_timeout):
                    await waiter
            except (TimeoutError, RedisError, OSError, ProbeFailed) as exc:
                self._probe_failures += 1
                raise ProbeFailed(f"the probe did not come back: {exc!r}") from exc
            finally:
                self._probe_back = None

    def _log(self, message: str) -> None:
        more = self._log_throttle.note(message[:40], time.monotonic())
        if more is not None:
            log.warning("%s%s", message, more)

    async def batches(self) -> AsyncIterator[Sequence[Update] | Resync]:
        handoff = self._handoff
        if handoff is None:
            raise ConnectionError("the redis broker is not started")
        while True:
            item = await handoff.get()
            if item is None:
                return
            yield item

    # -- publish ------------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> int:
        if self._client is None:
            raise ConnectionError("the redis broker is not started")
        ts = self._clock()  # one per batch, as the memory broker does
        accepted = 0
        for start in range(0, len(messages), CHUNK_MESSAGES):
            chunk = messages[start : start + CHUNK_MESSAGES]
            keys, args = publish_arguments(
                chunk, self._policies, DEFAULT_POLICY, ts, secrets.token_urlsafe(6)
            )
            try:
                with _unavailable("publish to redis failed"):
                    accepted += await self._publish_script(keys=keys, args=args)
            except ConnectionError as exc:
                self._publish_errors += 1
                if accepted:
                    raise PartialPublish(accepted, len(messages), exc) from exc
                raise
        return accepted

    # -- positions, history, nodes ------------------------------------------------------------

    async def positions(self, channel: str, topics: Sequence[str]) -> dict[str, Position]:
        if self._client is None:
            raise ConnectionError("the redis broker is not started")
        if not topics:
            return {}
        with _unavailable("reading positions from redis failed"):
            async with self._client.pipeline(transaction=False) as pipe:
                for topic in topics:
                    pipe.hmget(meta_key(channel, topic), "e", "s")
                replies = await pipe.execute()
        found = {}
        for topic, (epoch, seq) in zip(topics, replies, strict=True):
            found[topic] = NO_POSITION if epoch is None else Position(epoch.decode(), int(seq or 0))
        return found

    async def history(self, channel: str, topic: str, since: Position, limit: int) -> History:
        if self._client is None:
            raise ConnectionError("the redis broker is not started")
        with _unavailable("reading history from redis failed"):
            epoch, top, entries = await self._history_script(
                keys=[meta_key(channel, topic), history_key(channel, topic)],
                args=[since.epoch, since.seq, limit],
            )
        if epoch is None:  # no state: only "before the first update" is a position in it
            return History(NO_POSITION, recent((), NO_POSITION, since, limit))
        position = Position(epoch.decode(), int(top))
        updates = [decode_entry(channel, topic, position.epoch, entry) for entry in entries]
        return History(position, recent(updates, position, since, limit))

    async def snapshot(self, channel: str, topic: str) -> Snapshot | None:
        if self._client is None:
            raise ConnectionError("the redis broker is not started")
        policy = self._policies.get(channel, DEFAULT_POLICY)
        if policy.mode == "stream":
            return None
        keys = [meta_key(channel, topic)]
        if policy.mode == "book":
            keys += book_keys(channel, topic)
        with _unavailable("reading a snapshot from redis failed"):
            epoch, seq, ts, data = await self._snapshot_script(keys=keys)
        if epoch is None or data is None:  # no state (or a last topic without its value)
            return None
        position = Position(epoch.decode(), int(seq))
        if policy.mode == "last":
            return Snapshot(position, float(ts), orjson.Fragment(data))
        bids, asks = (
            tuple(zip(map(bytes.decode, side[::2]), map(bytes.decode, side[1::2]), strict=True))
            for side in data
        )
        crc = book.checksum(bids, asks) if policy.checksum else None
        whole = book.delta_data(book.Delta(bids, asks, True), crc)
        return Snapshot(position, float(ts), orjson.Fragment(orjson.dumps(whole)))

    def stats(self) -> BrokerStats:
        return BrokerStats(self._reconnects, self._publish_errors, self._probe_failures)

    async def put_node(self, node: str, record: bytes, ttl: float) -> None:
        if self._client is None:
            raise ConnectionError("the redis broker is not started")
        with _unavailable("storing the node record in redis failed"):
            await self._put_node_script(keys=[NODES_KEY], args=[node, record, milliseconds(ttl)])

    async def nodes(self) -> Mapping[str, bytes]:
        if self._client is None:
            raise ConnectionError("the redis broker is not started")
        with _unavailable("reading node records from redis failed"):
            found = await self._nodes_script(keys=[NODES_KEY])
        return {found[i].decode(): found[i + 1] for i in range(0, len(found), 2)}
