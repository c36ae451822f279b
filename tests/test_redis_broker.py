"""The Redis broker against a real redis-server (tests/redis_server.py): numbering shared by
several processes, history, positions, and what happens when Redis restarts, loses its data,
kills the subscription or goes deaf. Short timeouts and probe intervals keep it quick; the
waits are deadlines, not timings."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from tests.conftest import StartGateway, recv_json, request, until
from tests.redis_server import RedisServer
from wsgateway import Settings
from wsgateway.brokers import (
    NO_POSITION,
    RESYNC,
    HistoryPolicy,
    Message,
    Position,
    Resync,
    Update,
)
from wsgateway.brokers.redis import RedisBroker
from wsgateway.protocol import encode_data

POLICIES = {"ticker": HistoryPolicy(size=100, ttl=300, topic_ttl=3600)}
FAST = {"socket_timeout": 1.0, "connect_timeout": 1.0, "probe_interval": 0.2, "probe_timeout": 0.5}
DEADLINE = 10.0


def message(topic: str, value: Any, channel: str = "ticker") -> Message:
    return Message(channel, topic, encode_data(value))


@contextlib.asynccontextmanager
async def running(
    server: RedisServer, policies: dict[str, HistoryPolicy] | None = None, **options: Any
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(server.url, policies or POLICIES, **{**FAST, **options})
    await broker.start()
    try:
        assert broker.connected
        yield broker
    finally:
        await broker.stop()


class Feed:
    """What a broker's batches() yields, collected by a task."""

    def __init__(self, broker: RedisBroker) -> None:
        self.items: list[Sequence[Update] | Resync] = []
        self._task = asyncio.create_task(self._collect(broker))

    async def _collect(self, broker: RedisBroker) -> None:
        async for item in broker.batches():
            self.items.append(item)

    @property
    def updates(self) -> list[Update]:
        return [u for item in self.items if not isinstance(item, Resync) for u in item]

    def seqs(self, topic: str) -> list[int]:
        return [u.seq for u in self.updates if u.topic == topic]

    @property
    def resyncs(self) -> int:
        return sum(1 for item in self.items if isinstance(item, Resync))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def command(server: RedisServer, *words: str) -> bytes:
    return server.command(None, *words)


def integer(reply: bytes) -> int:
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


# -- numbering, epochs, positions ---------------------------------------------------------------


async def test_two_nodes_share_numbering_and_each_sees_every_update_once_in_order(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server) as one, running(redis_server) as two:
        feeds = [Feed(one), Feed(two)]
        # Both publish at once to the same topics: Redis orders them.
        await asyncio.gather(
            *(
                broker.publish([message("BTC", [n, i]), message("ETH", [n, i])])
                for i in range(50)
                for n, broker in enumerate((one, two))
            )
        )
        for feed in feeds:
            await until(lambda feed=feed: len(feed.updates) == 200, DEADLINE)  # type: ignore[misc]
            assert feed.seqs("BTC") == list(range(1, 101))
            assert feed.seqs("ETH") == list(range(1, 101))
            assert feed.resyncs == 0
            await feed.close()
        # Both processes saw the same updates: same data under the same seq.
        first, second = (
            [(u.topic, u.seq, bytes(orjson.dumps(u.data)), u.epoch) for u in feed.updates]
            for feed in feeds
        )
        assert sorted(first) == sorted(second)


async def test_an_update_carries_the_data_bytes_the_epoch_and_the_publishers_clock(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server, clock=lambda: 1234.5) as broker:
        feed = Feed(broker)
        data = {"price": "1.5", "note": "new\nline", "n": 2**60}
        await broker.publish([message("a topic/with:odd {chars}", data)])
        await until(lambda: len(feed.updates) == 1, DEADLINE)
        (update,) = feed.updates
        await feed.close()
        assert isinstance(update.data, orjson.Fragment)
        assert orjson.dumps(update.data) == orjson.dumps(data)
        assert (update.channel, update.topic, update.seq, update.ts) == (
            "ticker",
            "a topic/with:odd {chars}",
            1,
            1234.5,
        )
        positions = await broker.positions("ticker", ["a topic/with:odd {chars}"])
        assert positions == {"a topic/with:odd {chars}": Position(update.epoch, 1)}
        assert re.fullmatch(r"[A-Za-z0-9_-]{8}", update.epoch)


async def test_the_epoch_is_created_once_and_kept(redis_server: RedisServer) -> None:
    async with running(redis_server) as broker:
        await broker.publish([message("BTC", 1)])
        first = (await broker.positions("ticker", ["BTC"]))["BTC"]
        await broker.publish([message("BTC", 2), message("BTC", 3)])
        await broker.publish([message("ETH", 1)])
        later = await broker.positions("ticker", ["BTC", "ETH"])
        assert later["BTC"] == Position(first.epoch, 3)
        assert later["ETH"].seq == 1 and later["ETH"].epoch


async def test_positions_of_unknown_topics_create_no_state(redis_server: RedisServer) -> None:
    async with running(redis_server) as broker:
        await broker.publish([message("BTC", 1)])
        keys = integer(command(redis_server, "DBSIZE"))
        found = await broker.positions("ticker", ["BTC", "NOPE", "OTHER"])
        assert found["NOPE"] == found["OTHER"] == NO_POSITION
        assert found["BTC"].seq == 1
        assert await broker.positions("ticker", []) == {}
        assert (await broker.history("ticker", "NOPE", NO_POSITION, 10)).updates == []
        assert (await broker.history("ticker", "NOPE", Position("e", 3), 10)).updates is None
        assert integer(command(redis_server, "DBSIZE")) == keys


# -- history --------------------------------------------------------------------------------------


async def test_history_answers_like_the_memory_broker(redis_server: RedisServer) -> None:
    async with running(redis_server) as broker:
        await broker.publish([message("BTC", i) for i in range(1, 11)])
        top = (await broker.positions("ticker", ["BTC"]))["BTC"]
        assert top.seq == 10

        answer = await broker.history("ticker", "BTC", Position(top.epoch, 7), 100)
        assert answer.position == top
        assert answer.updates is not None
        assert [u.seq for u in answer.updates] == [8, 9, 10]
        assert [orjson.loads(orjson.dumps(u.data)) for u in answer.updates] == [8, 9, 10]
        assert {u.epoch for u in answer.updates} == {top.epoch}

        # "before the first update" matches an epoch whose history starts at 1
        from_start = await broker.history("ticker", "BTC", NO_POSITION, 100)
        assert from_start.updates is not None
        assert [u.seq for u in from_start.updates] == list(range(1, 11))
        assert (await broker.history("ticker", "BTC", Position("", 3), 100)).updates is None
        # up to date: nothing missing
        assert (await broker.history("ticker", "BTC", top, 100)).updates == []
        # another epoch, a seq ahead of the top, or more missing than the limit: no answer
        assert (await broker.history("ticker", "BTC", Position("other", 7), 100)).updates is None
        assert (await broker.history("ticker", "BTC", Position(top.epoch, 11), 100)).updates is None
        assert (await broker.history("ticker", "BTC", Position(top.epoch, 7), 2)).updates is None
        exact = await broker.history("ticker", "BTC", Position(top.epoch, 7), 3)
        assert exact.updates is not None and len(exact.updates) == 3


async def test_history_is_trimmed_to_about_its_size(redis_server: RedisServer) -> None:
    policies = {"ticker": HistoryPolicy(size=10, ttl=300, topic_ttl=3600)}
    async with running(redis_server, policies) as broker:
        for start in range(0, 1000, 100):
            await broker.publish([message("BTC", i) for i in range(start, start + 100)])
        # MAXLEN ~ trims whole stream nodes (100 entries by default): about, not exactly
        length = integer(command(redis_server, "XLEN", "wsg:{ticker:BTC}:history"))
        assert 10 <= length <= 210
        top = (await broker.positions("ticker", ["BTC"]))["BTC"]
        assert top.seq == 1000
        trimmed = await broker.history("ticker", "BTC", Position(top.epoch, 100), 1000)
        assert (trimmed.position, trimmed.updates) == (top, None)
        recent = await broker.history("ticker", "BTC", Position(top.epoch, 995), 100)
        assert recent.updates is not None
        assert [u.seq for u in recent.updates] == [996, 997, 998, 999, 1000]


async def test_history_expires_after_its_ttl_and_the_numbering_after_topic_ttl(
    redis_server: RedisServer,
) -> None:
    policies = {"ticker": HistoryPolicy(size=10, ttl=0.3, topic_ttl=1.5)}
    async with running(redis_server, policies) as broker:
        await broker.publish([message("BTC", 1), message("BTC", 2)])
        stream, meta = "wsg:{ticker:BTC}:history", "wsg:{ticker:BTC}:meta"
        assert 0 < integer(command(redis_server, "PTTL", stream)) <= 300
        assert 300 < integer(command(redis_server, "PTTL", meta)) <= 1500
        epoch = (await broker.positions("ticker", ["BTC"]))["BTC"].epoch

        await until(lambda: integer(command(redis_server, "EXISTS", stream)) == 0, DEADLINE)
        gone = await broker.history("ticker", "BTC", Position(epoch, 1), 10)
        assert (gone.position, gone.updates) == (Position(epoch, 2), None)

        await until(lambda: integer(command(redis_server, "EXISTS", meta)) == 0, DEADLINE)
        assert await broker.positions("ticker", ["BTC"]) == {"BTC": NO_POSITION}
        await broker.publish([message("BTC", 3)])
        again = (await broker.positions("ticker", ["BTC"]))["BTC"]
        assert again.seq == 1 and again.epoch != epoch


async def test_a_channel_without_history_keeps_numbering_only(redis_server: RedisServer) -> None:
    policies = {**POLICIES, "user": HistoryPolicy(size=0)}
    async with running(redis_server, policies) as broker:
        feed = Feed(broker)
        await broker.publish([message("alice", 1, "user"), message("alice", 2, "user")])
        await until(lambda: len(feed.updates) == 2, DEADLINE)
        await feed.close()
        assert [(u.channel, u.seq) for u in feed.updates] == [("user", 1), ("user", 2)]
        assert integer(command(redis_server, "EXISTS", "wsg:{user:alice}:history")) == 0
        top = (await broker.positions("user", ["alice"]))["alice"]
        assert (await broker.history("user", "alice", Position(top.epoch, 1), 10)).updates is None


async def test_publishing_works_when_the_meta_is_gone_but_the_stream_is_not(
    redis_server: RedisServer,
) -> None:
    # The "XADD ID equal or smaller than the target stream top item" trap.
    async with running(redis_server) as broker:
        await broker.publish([message("BTC", i) for i in range(5)])
        old = (await broker.positions("ticker", ["BTC"]))["BTC"]
        command(redis_server, "DEL", "wsg:{ticker:BTC}:meta")
        assert integer(command(redis_server, "XLEN", "wsg:{ticker:BTC}:history")) == 5
        await broker.publish([message("BTC", "new")])
        new = (await broker.positions("ticker", ["BTC"]))["BTC"]
        assert new.seq == 1 and new.epoch != old.epoch
        history = await broker.history("ticker", "BTC", NO_POSITION, 10)
        assert history.updates is not None
        assert [(u.seq, u.epoch) for u in history.updates] == [(1, new.epoch)]


async def test_a_stream_ahead_of_its_meta_starts_a_new_epoch(redis_server: RedisServer) -> None:
    # Acknowledged increments lost in a failover: the stream holds seqs the meta forgot.
    async with running(redis_server) as broker:
        feed = Feed(broker)
        await broker.publish([message("BTC", i) for i in range(5)])
        old = (await broker.positions("ticker", ["BTC"]))["BTC"]
        command(redis_server, "HSET", "wsg:{ticker:BTC}:meta", "s", "2")
        await broker.publish([message("BTC", "x"), message("BTC", "y")])
        new = (await broker.positions("ticker", ["BTC"]))["BTC"]
        assert new.seq == 2 and new.epoch != old.epoch
        await until(lambda: len(feed.updates) == 7, DEADLINE)
        await feed.close()
        assert [(u.seq, u.epoch) for u in feed.updates[5:]] == [(1, new.epoch), (2, new.epoch)]


# -- big batches and Redis work per message -------------------------------------------------------


async def test_a_publish_of_10000_messages_is_delivered_whole(redis_server: RedisServer) -> None:
    async with running(redis_server) as broker:
        feed = Feed(broker)
        topics = [f"T{i}" for i in range(50)]
        accepted = await broker.publish([message(topics[i % 50], {"i": i}) for i in range(10_000)])
        assert accepted == 10_000
        await until(lambda: len(feed.updates) == 10_000, DEADLINE)
        await feed.close()
        for topic in topics:
            assert feed.seqs(topic) == list(range(1, 201))
        assert [orjson.loads(orjson.dumps(u.data))["i"] for u in feed.updates] == list(
            range(10_000)
        )


def publish_calls(server: RedisServer) -> int:
    stats = command(server, "INFO", "commandstats").decode()
    found = re.search(r"cmdstat_publish:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


async def test_redis_work_per_publish_does_not_depend_on_the_number_of_processes(
    redis_server: RedisServer,
) -> None:
    quiet = {"probe_interval": 3600.0}  # no probe PUBLISH during the count

    async def publishes_for(processes: int) -> int:
        async with contextlib.AsyncExitStack() as stack:
            brokers = [
                await stack.enter_async_context(running(redis_server, **quiet))
                for _ in range(processes)
            ]
            feeds = [Feed(broker) for broker in brokers]
            before = publish_calls(redis_server)
            for i in range(10):
                await brokers[0].publish([message(f"T{j}", i) for j in range(20)])
            count = publish_calls(redis_server) - before
            for feed in feeds:
                await until(lambda feed=feed: len(feed.updates) == 200, DEADLINE)  # type: ignore[misc]
                await feed.close()
            return count

    assert await publishes_for(1) == await publishes_for(4) == 10


# -- faults ---------------------------------------------------------------------------------------


async def test_a_restart_with_the_same_data_continues_the_epoch_after_a_resync(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server) as broker:
        feed = Feed(broker)
        await broker.publish([message("BTC", 1), message("BTC", 2)])
        before = (await broker.positions("ticker", ["BTC"]))["BTC"]
        await until(lambda: len(feed.updates) == 2, DEADLINE)

        await asyncio.to_thread(redis_server.restart, down_for=0.3)
        await until(lambda: feed.resyncs == 1, DEADLINE)
        assert broker.connected  # by itself
        assert broker.stats().reconnects == 1

        await broker.publish([message("BTC", 3)])
        await until(lambda: len(feed.updates) == 3, DEADLINE)
        await feed.close()
        assert feed.items[-2] is RESYNC
        assert [(u.seq, u.epoch) for u in feed.updates] == [(s, before.epoch) for s in (1, 2, 3)]


async def test_a_restart_without_the_data_starts_a_new_epoch_at_seq_1(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server) as broker:
        feed = Feed(broker)
        await broker.publish([message("BTC", 1), message("BTC", 2)])
        before = (await broker.positions("ticker", ["BTC"]))["BTC"]

        await asyncio.to_thread(redis_server.restart, empty=True)
        await until(lambda: feed.resyncs == 1 and broker.connected, DEADLINE)
        assert await broker.positions("ticker", ["BTC"]) == {"BTC": NO_POSITION}
        # the script cache went with the server: the publish loads it again, once
        await broker.publish([message("BTC", "after")])
        after = (await broker.positions("ticker", ["BTC"]))["BTC"]
        assert after.seq == 1 and after.epoch != before.epoch
        await until(lambda: len(feed.updates) == 3, DEADLINE)
        await feed.close()
        assert [u.seq for u in feed.updates] == [1, 2, 1]


async def test_a_killed_subscription_is_rebuilt_and_the_relay_told_to_resync(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server) as broker:
        feed = Feed(broker)
        assert integer(command(redis_server, "CLIENT", "KILL", "TYPE", "pubsub")) == 1
        await until(lambda: feed.resyncs == 1 and broker.connected, DEADLINE)
        assert broker.stats().reconnects + broker.stats().probe_failures >= 1
        await broker.publish([message("BTC", 1)])
        await until(lambda: len(feed.updates) == 1, DEADLINE)
        await feed.close()


class FreezingProxy:
    """A TCP proxy in front of Redis that can go silent on the connections open now,
    without closing them: a half-open link, which only the probe can notice."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._frozen: set[asyncio.Task[None]] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
        sink.close()

    def freeze(self) -> None:
        """Stop forwarding on every connection open now (their sockets stay open)."""
        for task in self._pipes:
            task.cancel()
        self._frozen |= self._pipes
        self._pipes = set()

    async def close(self) -> None:
        for task in self._pipes | self._frozen:
            task.cancel()
        await asyncio.gather(*self._pipes, *self._frozen, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_deaf_subscription_is_found_by_the_probe_and_rebuilt(
    redis_server: RedisServer,
) -> None:
    proxy = FreezingProxy(redis_server.port)
    url = await proxy.start()
    broker = RedisBroker(url, POLICIES, **FAST)
    try:
        await broker.start()
        assert broker.connected
        feed = Feed(broker)
        proxy.freeze()  # no error, no close: just silence
        await until(lambda: broker.stats().probe_failures >= 1, DEADLINE)
        await until(lambda: feed.resyncs == 1 and broker.connected, DEADLINE)
        await broker.publish([message("BTC", 1)])
        await until(lambda: len(feed.updates) == 1, DEADLINE)
        await feed.close()
    finally:
        await broker.stop()
        await proxy.close()


async def test_publish_while_redis_is_down_fails_fast_and_is_counted(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server) as broker:
        await broker.publish([message("BTC", 1)])
        redis_server.kill()
        await until(lambda: not broker.connected, DEADLINE)
        # A deadline, not a timing: the broker's own timeouts (1 s here) must end it.
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(broker.publish([message("BTC", 2)]), DEADLINE)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(broker.positions("ticker", ["BTC"]), DEADLINE)
        assert broker.stats().publish_errors == 1
        assert not broker.connected

        await asyncio.to_thread(redis_server.start)
        await until(lambda: broker.connected, DEADLINE)
        assert (await broker.publish([message("BTC", 3)])) == 1


async def test_start_while_redis_is_down_connects_later(redis_server: RedisServer) -> None:
    redis_server.kill()
    broker = RedisBroker(redis_server.url, POLICIES, **FAST)
    try:
        await broker.start()
        assert not broker.connected
        feed = Feed(broker)
        await asyncio.to_thread(redis_server.start)
        await until(lambda: broker.connected, DEADLINE)
        await broker.publish([message("BTC", 1)])
        await until(lambda: len(feed.updates) == 1, DEADLINE)
        await feed.close()
    finally:
        await broker.stop()


async def test_stop_ends_the_relays_iteration(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, POLICIES, **FAST)
    await broker.start()
    batches = broker.batches()
    waiting = asyncio.create_task(anext(batches, None))
    await asyncio.sleep(0)
    await broker.stop()
    assert await asyncio.wait_for(waiting, DEADLINE) is None
    assert not broker.connected
    with pytest.raises(ConnectionError):
        await broker.publish([message("BTC", 1)])


# -- node records -----------------------------------------------------------------------------


async def test_every_node_lists_every_live_nodes_record(redis_server: RedisServer) -> None:
    async with running(redis_server) as one, running(redis_server) as two:
        await one.put_node("n1", b'{"connections":1}', 30)
        await two.put_node("n2", b'{"connections":2}', 0.2)
        assert (
            await one.nodes()
            == await two.nodes()
            == {
                "n1": b'{"connections":1}',
                "n2": b'{"connections":2}',
            }
        )
        await two.put_node("n1", b'{"connections":3}', 30)  # a newer record replaces it
        await until(lambda: integer(command(redis_server, "EXISTS", "wsg:{nodes}:n2")) == 0)
        assert await one.nodes() == {"n1": b'{"connections":3}'}
        # the expired id was pruned from the index
        assert command(redis_server, "SMEMBERS", "wsg:{nodes}") == b"*1\r\n$2\r\nn1\r\n"


# -- the gateway on Redis, end to end ---------------------------------------------------------


@pytest.mark.e2e
async def test_a_gateway_on_redis_delivers_and_answers_503_while_redis_is_down(
    redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    settings = replace(Settings(), broker=redis_server.url)
    gw = await start_gateway(settings)
    async with (
        websockets.connect(gw.ws_url("ticker")) as ws,
        aiohttp.ClientSession(base_url=gw.http) as http,
    ):
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
        assert reply["type"] == "subscribed"
        body = {"channel": "ticker", "topic": "BTC-USD", "data": {"price": 1}}
        async with http.post("/api/publish", json=body) as response:
            assert (response.status, await response.json()) == (200, {"accepted": 1})
        update = await recv_json(ws)
        assert (update["type"], update["topic"], update["seq"], update["data"]) == (
            "update",
            "BTC-USD",
            1,
            {"price": 1},
        )

        await asyncio.to_thread(redis_server.stop)  # saves its data first
        await until(lambda: not gw.gateway.broker.connected, DEADLINE)
        async with http.post("/api/publish", json=body) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            assert (await response.json())["error"] == "broker_unavailable"
        async with http.get("/readyz") as response:
            assert response.status == 503
            assert (await response.json())["reason"] == "broker disconnected"
        async with http.get("/metrics") as response:
            text = await response.text()
            assert "wsgateway_broker_connected 0.0" in text.splitlines()

        await asyncio.to_thread(redis_server.start)
        await until(lambda: gw.gateway.broker.connected, DEADLINE * 2)
        async with http.get("/readyz") as response:
            assert response.status == 200
        async with http.post("/api/publish", json=body) as response:
            assert response.status == 200
        update = await recv_json(ws)
        assert (update["topic"], update["seq"]) == ("BTC-USD", 2)  # the data was saved
        async with http.get("/metrics") as response:
            text = await response.text()
            assert "wsgateway_broker_reconnects_total 1.0" in text.splitlines()
            assert "wsgateway_broker_publish_errors_total 0.0" in text.splitlines()
