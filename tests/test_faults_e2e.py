"""Faults, for real (issue 8, section 5): a real redis-server stopped, restarted empty,
its pub/sub connections killed, while gateways on it serve real WebSocket clients
(python-websockets) and a publisher keeps publishing over HTTP.

The gateways run in this process (``start_gateway``), two of them on one Redis where it
shows more: clients on one node, the publisher on the other. The waits are deadlines, not
timings; the recovery times measured are printed (``pytest -s``) and kept as test
properties (``--junitxml``).

A gap in a node's live feed needs updates published while its pub/sub connection is down
but Redis is up: another node that reconnected first. Which node reconnects first is left
to jittered backoff, so the tests make that gap certain: Redis is started ON the event
loop's thread (the gateways cannot reconnect meanwhile) and a third node publishes through
a synchronous client before the loop runs again (:func:`start_and_publish_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import aiohttp
import pytest
import redis
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway, StartGateway, recv_json, request, until
from tests.redis_server import RedisServer
from wsgateway import Limits, Settings
from wsgateway.brokers import Message, Position
from wsgateway.brokers.redis import DEFAULT_POLICY
from wsgateway.brokers.redis_codec import history_key, meta_key, publish_arguments
from wsgateway.protocol import encode_data

pytestmark = pytest.mark.e2e

CHANNEL = "ticker"
#: the topics the publisher publishes to
TOPICS = ("BTC-USD", "ETH-USD", "SOL-USD")
#: a topic only the third node publishes to (publish_elsewhere): nothing live follows its
#: gap, so only the relay's resync after the reconnect can repair it
QUIET = "XRP-USD"
ALL = (*TOPICS, QUIET)
DEADLINE = 15.0
#: seconds between two publish rounds (one update per topic each)
PUBLISH_INTERVAL = 0.02


def settings_for(server: RedisServer, **limits: Any) -> Settings:
    return Settings(broker=server.url, defaults=replace(Limits(), **limits))


# -- a WebSocket client that records everything ----------------------------------------------------


class Client:
    """A python-websockets client subscribed to some topics; a task records every frame."""

    def __init__(self, ws: websockets.ClientConnection, reply: dict[str, Any]) -> None:
        self.ws = ws
        self.reply = reply
        self.frames: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        gw: RunningGateway,
        topics: tuple[str, ...],
        since: dict[str, dict[str, Any]] | None = None,
    ) -> Client:
        ws = await websockets.connect(gw.ws_url(CHANNEL))
        subscribe: dict[str, Any] = {"type": "subscribe", "topics": list(topics), "id": 1}
        if since is not None:
            subscribe["since"] = since
        try:
            reply = await request(ws, subscribe)
            assert reply["type"] == "subscribed", reply
        except BaseException:
            await ws.close()
            raise
        return cls(ws, reply)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))

    def updates(self, topic: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "update" and f["topic"] == topic]

    def seqs(self, topic: str) -> list[int]:
        return [f["seq"] for f in self.updates(topic)]

    def resets(self, topic: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "reset" and f["topic"] == topic]

    def others(self) -> list[dict[str, Any]]:
        """Frames that are neither updates nor resets (errors, replies)."""
        return [f for f in self.frames if f["type"] not in ("update", "reset")]

    @property
    def open(self) -> bool:
        return self.ws.close_code is None and not self._task.done()

    async def close(self) -> None:
        await self.ws.close()
        await self._task


def two_nodes_of_clients(node_a: RunningGateway, node_b: RunningGateway) -> list[Any]:
    """Three clients on node A with overlapping topics, one on node B with all of them."""
    return [
        Client.connect(node_a, ALL[:2]),
        Client.connect(node_a, ALL[1:]),
        Client.connect(node_a, ALL),
        Client.connect(node_b, ALL),
    ]


@contextlib.asynccontextmanager
async def clients(*connecting: Any) -> Any:
    """Connect the clients given as awaitables; all are closed afterwards."""
    connected: list[Client] = []
    try:
        for client in connecting:
            connected.append(await client)
        yield connected
    finally:
        for client in connected:
            await client.close()


# -- a publisher that retries like a real one ------------------------------------------------------


@dataclass
class Publisher:
    """Publishes one update per topic per round to ``POST /api/publish`` of one node; a
    refused round (503) is sent again after a pause, so the sequence goes on. Retry-After
    (5 s) is checked, not waited for: the test wants the feed back as soon as it can be."""

    gw: RunningGateway
    topics: tuple[str, ...] = TOPICS
    #: the rounds Redis accepted (every topic got ``{"n": round}``)
    accepted: int = 0
    refused: list[tuple[int, str | None, dict[str, Any]]] = field(default_factory=list)
    paused: bool = False
    _task: asyncio.Task[None] | None = None
    _round: asyncio.Lock = field(default_factory=asyncio.Lock)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with aiohttp.ClientSession(base_url=self.gw.http) as http:
            while True:
                await asyncio.sleep(PUBLISH_INTERVAL)
                async with self._round:
                    if not self.paused:
                        await self._publish(http)

    async def _publish(self, http: aiohttp.ClientSession) -> None:
        body = {
            "messages": [
                {"channel": CHANNEL, "topic": topic, "data": {"n": self.accepted + 1}}
                for topic in self.topics
            ]
        }
        async with http.post("/api/publish", json=body) as response:
            answer = await response.json()
            if response.status == 200:
                assert answer == {"accepted": len(self.topics)}
                self.accepted += 1
            else:
                self.refused.append((response.status, response.headers.get("Retry-After"), answer))

    async def pause(self) -> None:
        """Stop publishing once the round on its way is answered."""
        async with self._round:
            self.paused = True

    async def rounds(self, more: int) -> None:
        """Wait until ``more`` further rounds were accepted."""
        target = self.accepted + more
        await until(lambda: self.accepted >= target, DEADLINE)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@contextlib.asynccontextmanager
async def publishing(gw: RunningGateway) -> Any:
    publisher = Publisher(gw)
    publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


# -- Redis, seen from outside the code under test --------------------------------------------------


def position(server: RedisServer, topic: str) -> Position:
    """The topic's position as Redis holds it (its meta hash), read by a plain client."""
    with redis.Redis.from_url(server.url, protocol=2) as client:
        epoch, seq = client.hmget(meta_key(CHANNEL, topic), ["e", "s"])
    return Position("", 0) if epoch is None else Position(epoch.decode(), int(seq))


def publish_elsewhere(
    server: RedisServer, rounds: int, first: int, topics: tuple[str, ...] = ALL
) -> None:
    """Publish ``rounds`` updates per topic as a third node would: the gateway's own publish
    script through a synchronous client (no event loop involved)."""
    script_text = (
        resources.files("wsgateway.brokers").joinpath("scripts", "publish.lua").read_text()
    )
    with redis.Redis.from_url(server.url, protocol=2) as client:
        script = client.register_script(script_text)
        for n in range(first, first + rounds):
            messages = [Message(CHANNEL, t, encode_data({"n": n})) for t in topics]
            keys, args = publish_arguments(
                messages, {}, DEFAULT_POLICY, time.time(), secrets.token_urlsafe(6)
            )
            assert script(keys=keys, args=args) == len(topics)


def start_and_publish_elsewhere(
    server: RedisServer, *, empty: bool, rounds: int, first: int
) -> float:
    """Start Redis and publish ``rounds`` rounds through a third node, on purpose ON the
    event loop's thread: no gateway can re-subscribe before those updates are in, so each
    one's live feed has a gap its repair must deal with. Returns when Redis was up."""
    server.start(empty=empty)
    up = time.monotonic()
    publish_elsewhere(server, rounds, first)
    return up


# -- the gateway's own word ------------------------------------------------------------------------


async def metrics(gw: RunningGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as http, http.get(gw.http + "/metrics") as response:
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def ready(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(gw.http + "/readyz") as response:
        return response.status, await response.json()


async def until_ready(gw: RunningGateway, timeout: float = DEADLINE) -> None:
    """Poll /readyz, as a load balancer would, until it answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await ready(gw))[0] != 200:
        assert loop.time() < deadline, "the gateway did not become ready again in time"
        await asyncio.sleep(0.02)


def report(record_property: Any, name: str, seconds: float) -> None:
    record_property(name, round(seconds, 3))
    print(f"\n{name}: {seconds:.3f} s")


async def received(client: Client, counts: dict[str, int]) -> None:
    """Wait until ``client`` holds ``counts[topic]`` updates of each topic; on a deadline
    the caller's asserts say what is missing, rather than this wait."""
    with contextlib.suppress(AssertionError):
        await until(lambda: all(len(client.seqs(t)) >= n for t, n in counts.items()), DEADLINE)


def assert_whole_feed(client: Client, topics: tuple[str, ...], tops: dict[str, int]) -> None:
    """Every seq of each topic exactly once, in order, up to Redis's top; no reset."""
    for topic in topics:
        assert client.seqs(topic) == list(range(1, tops[topic] + 1)), topic
        assert client.resets(topic) == []
    assert client.others() == []
    assert client.open


# -- 1. stopped for 5 s, started again with its data -----------------------------------------------


@pytest.mark.attack
async def test_redis_down_for_5_s_clients_stay_connected_and_miss_nothing(
    redis_server: RedisServer, start_gateway: StartGateway, record_property: Any
) -> None:
    settings = settings_for(redis_server)
    node_a = await start_gateway(settings)  # the clients' node
    node_b = await start_gateway(settings)  # the publisher's node (one client too)
    async with (
        clients(*two_nodes_of_clients(node_a, node_b)) as connected,
        publishing(node_b) as publisher,
    ):
        await publisher.rounds(10)
        publish_elsewhere(redis_server, 3, 1, (QUIET,))

        stopped = time.monotonic()
        await asyncio.to_thread(redis_server.stop)  # saves its data
        await until(lambda: not node_a.gateway.broker.connected, DEADLINE)
        await until(lambda: not node_b.gateway.broker.connected, DEADLINE)
        assert (await ready(node_a))[0] == 503
        before = publisher.accepted
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - stopped)))
        assert publisher.accepted == before  # nothing got through the outage
        assert publisher.refused, "the publisher was never refused while Redis was down"
        for status, retry_after, answer in publisher.refused:
            assert (status, retry_after, answer["error"]) == (503, "5", "broker_unavailable")

        # Redis is back with its data; another node publishes 5 rounds before either
        # gateway re-subscribes (see the module docstring), then the loop runs on.
        up = start_and_publish_elsewhere(
            redis_server, empty=False, rounds=5, first=publisher.accepted + 1
        )
        publisher.accepted += 5  # its data goes on from there
        await until_ready(node_a)
        report(record_property, "node_a_ready_after_redis_up", time.monotonic() - up)
        await until_ready(node_b)
        report(record_property, "node_b_ready_after_redis_up", time.monotonic() - up)
        await publisher.rounds(10)
        await publisher.stop()

        tops = {topic: position(redis_server, topic).seq for topic in ALL}
        assert all(tops[topic] >= publisher.accepted for topic in TOPICS)
        assert tops[QUIET] == 8
        for client in connected:
            topics = tuple(client.reply["topics"])
            await received(client, {t: tops[t] for t in topics})
            assert_whole_feed(client, topics, tops)
            # the data went on from before the outage to after it, none skipped
            values = [u["data"]["n"] for u in client.updates(topics[0])]
            assert values == sorted(values)
            assert set(range(1, publisher.accepted + 1)) <= set(values)

    for node in (node_a, node_b):
        found = await metrics(node)
        assert sample(found, "wsgateway_broker_reconnects_total") >= 1
        assert sample(found, "wsgateway_broker_connected") == 1
        assert (
            sample(found, "wsgateway_repairs_total", channel=CHANNEL, outcome="filled")
            == 4  # every topic with subscribers on the node, each once
        )
        assert sample(found, "wsgateway_repairs_total", channel=CHANNEL, outcome="reset") == 0
        assert sample(found, "wsgateway_resets_sent_total", channel=CHANNEL) == 0


# -- 2. restarted empty ----------------------------------------------------------------------------


@pytest.mark.attack
async def test_redis_restarted_empty_every_subscriber_gets_reset_and_a_new_epoch(
    redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    settings = settings_for(redis_server)
    node_a = await start_gateway(settings)
    node_b = await start_gateway(settings)
    async with (
        clients(*two_nodes_of_clients(node_a, node_b)) as connected,
        publishing(node_b) as publisher,
    ):
        await publisher.rounds(5)
        await publisher.pause()
        publish_elsewhere(redis_server, 3, 1, (QUIET,))
        old = {topic: position(redis_server, topic) for topic in ALL}
        for client in connected:
            await received(client, {t: old[t].seq for t in client.reply["topics"]})

        # A server without persistence comes back with nothing; another node gets 3 rounds
        # in before these two re-subscribe (the module docstring says why on purpose).
        await asyncio.to_thread(redis_server.stop, save=False)
        await until(lambda: not node_a.gateway.broker.connected, DEADLINE)
        await until(lambda: not node_b.gateway.broker.connected, DEADLINE)
        start_and_publish_elsewhere(redis_server, empty=True, rounds=3, first=1)
        new = {topic: position(redis_server, topic) for topic in ALL}
        assert all(new[t].seq == 3 and new[t].epoch != old[t].epoch for t in ALL)
        await until_ready(node_a)
        await until_ready(node_b)
        publisher.paused = False
        await publisher.rounds(5)
        await publisher.stop()

        tops = {topic: position(redis_server, topic) for topic in ALL}
        assert tops[QUIET].seq == 3
        for client in connected:
            topics = client.reply["topics"]
            await received(client, {t: old[t].seq + tops[t].seq for t in topics})
            assert client.open
            assert client.others() == []
            for topic in topics:
                frames = [f for f in client.frames if f["topic"] == topic]
                (reset,) = client.resets(topic)
                cut = frames.index(reset)
                before, after = frames[:cut], frames[cut + 1 :]
                assert [f["seq"] for f in before] == list(range(1, old[topic].seq + 1))
                assert reset == {
                    "type": "reset",
                    "channel": CHANNEL,
                    "topic": topic,
                    "epoch": tops[topic].epoch,
                    "seq": 0,
                }
                # seq restarts at 1 under the new epoch, named by its first update
                assert [f["seq"] for f in after] == list(range(1, tops[topic].seq + 1))
                assert after[0]["epoch"] == tops[topic].epoch
                assert all("epoch" not in f for f in after[1:])

    for node, resets_sent in ((node_a, 2 + 3 + 4), (node_b, 4)):
        assert node.gateway.readiness() is None  # the relay did not crash
        found = await metrics(node)
        assert sample(found, "wsgateway_repairs_total", channel=CHANNEL, outcome="reset") == 4
        assert sample(found, "wsgateway_repairs_total", channel=CHANNEL, outcome="filled") == 0
        assert sample(found, "wsgateway_resets_sent_total", channel=CHANNEL) == resets_sent


# -- 3. the pub/sub connections killed -------------------------------------------------------------


@pytest.mark.attack
async def test_killed_pubsub_connections_are_rebuilt_at_once_and_clients_miss_nothing(
    redis_server: RedisServer, start_gateway: StartGateway, record_property: Any
) -> None:
    settings = settings_for(redis_server)
    node_a = await start_gateway(settings)
    node_b = await start_gateway(settings)
    async with (
        clients(
            Client.connect(node_a, TOPICS[:2]),
            Client.connect(node_a, TOPICS),
            Client.connect(node_b, TOPICS),
        ) as connected,
        publishing(node_b) as publisher,
    ):
        await publisher.rounds(10)
        brokers = [node_a.gateway.broker, node_b.gateway.broker]
        killed = time.monotonic()
        reply = redis_server.command(None, "CLIENT", "KILL", "TYPE", "pubsub")
        assert reply == b":2\r\n"  # one per node, nothing else
        for name, broker in zip(("node_a", "node_b"), brokers, strict=True):
            await until(lambda b=broker: b.stats().reconnects == 1 and b.connected, 10.0)  # type: ignore[misc]
            report(record_property, f"{name}_pubsub_rebuilt_after_kill", time.monotonic() - killed)
        await publisher.rounds(10)
        await publisher.stop()

        tops = {topic: position(redis_server, topic).seq for topic in TOPICS}
        for client in connected:
            topics = tuple(client.reply["topics"])
            await received(client, {t: tops[t] for t in topics})
            assert_whole_feed(client, topics, tops)
    for node in (node_a, node_b):
        found = await metrics(node)
        assert sample(found, "wsgateway_broker_reconnects_total") == 1
        assert sample(found, "wsgateway_repairs_total", channel=CHANNEL, outcome="reset") == 0


# -- 4. while Redis is unreachable -----------------------------------------------------------------


@pytest.mark.attack
async def test_while_redis_is_unreachable_publishers_and_new_subscribers_get_clear_answers(
    redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    # Stream: a topic relayed here is joined without Redis (a last topic needs its snapshot).
    node = await start_gateway(settings_for(redis_server, mode="stream"))
    async with (
        clients(Client.connect(node, ("BTC-USD",))) as (watcher,),
        aiohttp.ClientSession(base_url=node.http) as http,
        websockets.connect(node.ws_url(CHANNEL)) as newcomer,
        websockets.connect(node.ws_url(CHANNEL)) as mixed,
    ):
        await node.publish(CHANNEL, "BTC-USD", {"n": 1})
        await until(lambda: watcher.seqs("BTC-USD") == [1])
        epoch = watcher.updates("BTC-USD")[0]["epoch"]

        await asyncio.to_thread(redis_server.stop)  # saves its data
        await until(lambda: not node.gateway.broker.connected, DEADLINE)

        body = {"channel": CHANNEL, "topic": "BTC-USD", "data": {"n": 2}}
        async with http.post("/api/publish", json=body) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            assert response.content_type == "application/json"
            assert await response.json() == {
                "error": "broker_unavailable",
                "field": "broker",
                "message": "the broker is not connected; try again later",
            }
        assert await ready(node) == (503, {"ready": False, "reason": "broker disconnected"})
        found = await metrics(node)
        assert sample(found, "wsgateway_broker_connected") == 0

        # A topic only Redis knows: a clear error, the connection stays, nothing subscribed.
        unknown = {"type": "subscribe", "topics": ["ETH-USD"], "id": 7}
        error = await request(newcomer, unknown, timeout=DEADLINE)
        assert error == {
            "type": "error",
            "code": "unavailable",
            "message": "the broker did not answer; nothing was subscribed, try again",
            "id": 7,
        }
        # Resuming needs Redis's history, even on a topic this node relays.
        since = {"BTC-USD": {"seq": 0, "epoch": ""}}
        resume = {"type": "subscribe", "topics": ["BTC-USD"], "since": since, "id": 8}
        assert (await request(newcomer, resume, timeout=DEADLINE))["code"] == "unavailable"
        # Asked together, a known and an unknown topic: all or nothing.
        both = {"type": "subscribe", "topics": ["BTC-USD", "ETH-USD"], "id": 9}
        assert (await request(mixed, both, timeout=DEADLINE))["code"] == "unavailable"
        # A topic this node relays: its position is known here, no Redis needed.
        known = {"type": "subscribe", "topics": ["BTC-USD"], "id": 10}
        assert await request(newcomer, known) == {
            "type": "subscribed",
            "topics": ["BTC-USD"],
            "positions": {"BTC-USD": {"seq": 1, "epoch": epoch}},
            "id": 10,
        }
        await asyncio.wait_for(await newcomer.ping(), 5)  # both stay connected and served
        await asyncio.wait_for(await watcher.ws.ping(), 5)
        assert watcher.open and watcher.others() == []

        await asyncio.to_thread(redis_server.start)
        await until_ready(node)
        again = {"type": "subscribe", "topics": ["ETH-USD"], "id": 11}
        assert (await request(newcomer, again))["type"] == "subscribed"
        await node.gateway.publish_many(
            [
                {"channel": CHANNEL, "topic": "ETH-USD", "data": {"n": 1}},
                {"channel": CHANNEL, "topic": "BTC-USD", "data": {"n": 2}},
            ]
        )
        updates = [await recv_json(newcomer), await recv_json(newcomer)]
        assert sorted((u["topic"], u["seq"]) for u in updates) == [("BTC-USD", 2), ("ETH-USD", 1)]
        await until(lambda: watcher.seqs("BTC-USD") == [1, 2])
        # BTC-USD 2 went out to its subscribers before this reply: not to ``mixed``, whose
        # failed subscribe left it subscribed to nothing, as the error said.
        later = {"type": "subscribe", "topics": ["SOL-USD"], "id": 12}
        assert (await request(mixed, later))["type"] == "subscribed"


# -- 5. resume across a gateway restart ------------------------------------------------------------


async def test_a_client_resumes_on_a_restarted_gateway_with_exactly_what_it_missed(
    redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    settings = settings_for(redis_server)
    publisher = await start_gateway(settings)
    first = await start_gateway(settings)
    async with clients(Client.connect(first, ("BTC-USD",))) as (client,):
        for n in range(1, 6):
            await publisher.publish(CHANNEL, "BTC-USD", {"n": n})
        await until(lambda: len(client.seqs("BTC-USD")) == 5)
        epoch = client.updates("BTC-USD")[0]["epoch"]
    await first.server.close()  # the gateway goes away (a deploy)
    for n in range(6, 13):
        await publisher.publish(CHANNEL, "BTC-USD", {"n": n})

    second = await start_gateway(settings)
    since = {"BTC-USD": {"seq": 5, "epoch": epoch}}
    async with clients(Client.connect(second, ("BTC-USD",), since)) as (client,):
        assert client.reply["positions"] == {
            "BTC-USD": {"seq": 12, "epoch": epoch, "recovered": True}
        }
        await publisher.publish(CHANNEL, "BTC-USD", {"n": 13})
        await until(lambda: len(client.frames) >= 8)
        assert client.seqs("BTC-USD") == list(range(6, 14))
        assert [u["data"]["n"] for u in client.updates("BTC-USD")] == list(range(6, 14))
        assert client.others() == [] and client.resets("BTC-USD") == []
    found = await metrics(second)
    assert sample(found, "wsgateway_resumes_total", channel=CHANNEL, outcome="recovered") == 1
    assert sample(found, "wsgateway_replayed_updates_total", channel=CHANNEL) == 7


async def test_a_resume_past_the_trimmed_history_is_not_recovered_and_replays_nothing(
    redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    # XADD MAXLEN ~ trims whole stream nodes (100 entries each by default): with
    # history_size 5, the oldest updates are gone only once more than ~105 were published.
    # Stream: on a last channel an unrecovered resume gets the snapshot (test_modes_e2e).
    settings = settings_for(redis_server, history_size=5, mode="stream")
    publisher = await start_gateway(settings)
    first = await start_gateway(settings)
    async with clients(Client.connect(first, ("BTC-USD",))) as (client,):
        for n in range(1, 4):
            await publisher.publish(CHANNEL, "BTC-USD", {"n": n})
        await until(lambda: len(client.seqs("BTC-USD")) == 3)
        epoch = client.updates("BTC-USD")[0]["epoch"]
    await first.server.close()
    missed = [{"channel": CHANNEL, "topic": "BTC-USD", "data": {"n": n}} for n in range(4, 154)]
    await publisher.gateway.publish_many(missed)
    with redis.Redis.from_url(redis_server.url, protocol=2) as plain:
        assert plain.xlen(history_key(CHANNEL, "BTC-USD")) < 150  # trimmed, as the test needs

    second = await start_gateway(settings)
    since = {"BTC-USD": {"seq": 3, "epoch": epoch}}
    async with clients(Client.connect(second, ("BTC-USD",), since)) as (client,):
        assert client.reply["positions"] == {
            "BTC-USD": {"seq": 153, "epoch": epoch, "recovered": False}
        }
        await publisher.publish(CHANNEL, "BTC-USD", {"n": 154})
        await until(lambda: len(client.frames) >= 1)
        assert client.seqs("BTC-USD") == [154]  # no replay: the live feed from the top on
        assert client.others() == [] and client.resets("BTC-USD") == []
    found = await metrics(second)
    assert sample(found, "wsgateway_resumes_total", channel=CHANNEL, outcome="not_recovered") == 1
    assert sample(found, "wsgateway_replayed_updates_total", channel=CHANNEL) == 0
