"""Last values and order books in the Redis broker (scripts/publish.lua, snapshot.lua),
against a real redis-server: the same feed gives the same update data and snapshots, byte
for byte, as the memory broker (whose books are wsgateway/book.py itself), and the state
lives and goes with the topic's numbering."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from tests.conftest import until
from tests.fakes import FakeClock
from tests.redis_server import RedisServer
from tests.test_redis_broker import FAST, Feed, command, integer
from wsgateway.book import Book, delta_data, parse_delta
from wsgateway.brokers import NO_POSITION, HistoryPolicy, Message, Snapshot, Update
from wsgateway.brokers import redis as redis_broker
from wsgateway.brokers.memory import MemoryBroker
from wsgateway.brokers.redis import RedisBroker
from wsgateway.brokers.redis_codec import book_keys, meta_key
from wsgateway.protocol import encode_data

DEADLINE = 10.0
POLICIES = {
    "orderbook": HistoryPolicy(size=50, mode="book", max_book_levels=4, checksum=True),
    "plain": HistoryPolicy(size=0, mode="book", max_book_levels=6, checksum=False),
    "ticker": HistoryPolicy(size=50, mode="last"),
    "trades": HistoryPolicy(size=50),
}
BOOKS = ("orderbook", "plain")
TOPICS = ("BTC-USD", "ETH-USD")


def random_price(rng: random.Random) -> object:
    """Prices in several forms, some equal in value (one level), some close in value."""
    whole = rng.choice([99, 100, 101, 1000, 9, 10, 100000])
    form = rng.randrange(5)
    if form == 0:
        return whole
    if form == 1:
        return f"{whole}.{rng.choice(['5', '50', '05', '0'])}"
    if form == 2:
        return whole + rng.choice([0.25, 0.5, 0.125])
    if form == 3:
        return rng.choice(["0.001", "0.0010", 1e-3, "0.5", "123456789.012345"])
    return f"{whole}.{rng.randrange(100)}"


def random_qty(rng: random.Random) -> object:
    return rng.choice([0, "0", "0.000", 1, 2.5, "3.10", "0.0001", "12345678901234567890.5"])


def random_book_data(rng: random.Random) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for side in ("bids", "asks"):
        if rng.random() < 0.9:
            data[side] = [
                [random_price(rng), random_qty(rng)] for _ in range(rng.choice([0, 1, 2, 5, 9]))
            ]
    if rng.random() < 0.1:
        data["snapshot"] = True
    return data


def random_batch(rng: random.Random, size: int) -> list[Message]:
    batch = []
    for _ in range(size):
        channel = rng.choice([*BOOKS, "ticker", "trades"])
        topic = rng.choice(TOPICS)
        if channel in BOOKS:
            batch.append(Message(channel, topic, parse_delta(random_book_data(rng))))
        else:
            batch.append(Message(channel, topic, encode_data({"n": rng.randrange(1000)})))
    return batch


async def drain_memory(broker: MemoryBroker, count: int) -> list[Update]:
    taken: list[Update] = []
    batches = broker.batches()
    while len(taken) < count:
        batch = await asyncio.wait_for(anext(batches), DEADLINE)
        assert isinstance(batch, Sequence)
        taken.extend(batch)
    await batches.aclose()
    return taken


def described(update: Update) -> tuple[str, str, int, float, bytes]:
    return (update.channel, update.topic, update.seq, update.ts, orjson.dumps(update.data))


def by_channel(updates: list[tuple[str, str, int, float, bytes]]) -> dict[str, list[Any]]:
    ordered: dict[str, list[Any]] = {}
    for update in updates:
        ordered.setdefault(update[0], []).append(update)
    return ordered


def snapshot_bytes(snapshot: Snapshot | None) -> tuple[int, float, bytes] | None:
    if snapshot is None:
        return None
    return (snapshot.position.seq, snapshot.ts, orjson.dumps(snapshot.data))


@pytest.mark.parametrize("seed", [9, 2026, 77])
async def test_the_same_feed_gives_the_same_updates_and_snapshots_in_both_brokers(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Small script calls: a batch split in several keeps its order across them.
    monkeypatch.setattr(redis_broker, "CHUNK_MESSAGES", 7)
    clock = FakeClock()
    memory = MemoryBroker(POLICIES, clock)
    await memory.start()
    redis = RedisBroker(redis_server.url, POLICIES, clock=clock, **FAST)
    await redis.start()
    feed = Feed(redis)
    rng = random.Random(seed)
    published = 0
    try:
        for round_ in range(30):
            batch = random_batch(rng, rng.choice([1, 3, 20]))
            clock.advance(0.5)
            await memory.publish(batch)
            await redis.publish(batch)
            published += len(batch)
            if round_ % 5 == 4:  # between publishes: every topic's state in both
                for channel in POLICIES:
                    for topic in (*TOPICS, "never-published"):
                        expected = await memory.snapshot(channel, topic)
                        got = await redis.snapshot(channel, topic)
                        assert snapshot_bytes(got) == snapshot_bytes(expected), (channel, topic)
        want = [described(u) for u in await drain_memory(memory, published)]
        await until(lambda: len(feed.updates) >= published, DEADLINE)
        # (Redis sends a script call's updates one pub/sub message per channel: the order
        # holds per channel, not across channels)
        assert by_channel([described(u) for u in feed.updates]) == by_channel(want)
        # The feed did what it is meant to: trims, snapshots and both checksum settings.
        sent = b"\n".join(data for *_, data in want)
        assert b'"snapshot":true' in sent and b'"checksum"' in sent
        assert b'"checksum"' not in b"".join(d for c, *_, d in want if c == "plain")
        trimmed = [d for c, *_, d in want if c == "orderbook" and d.count(b"],[") >= 9]
        assert trimmed  # 9 levels a side at most, 4 kept: removals follow them
        # The history holds what the live feed carried.
        history = await redis.history("orderbook", "BTC-USD", NO_POSITION, 100)
        assert history.updates is not None
        live = [u for u in feed.updates if (u.channel, u.topic) == ("orderbook", "BTC-USD")]
        assert [described(u) for u in history.updates] == [described(u) for u in live]
    finally:
        await feed.close()
        await redis.stop()
        await memory.stop()


@contextlib.asynccontextmanager
async def running(
    server: RedisServer, policies: dict[str, HistoryPolicy] = POLICIES
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(server.url, policies, **FAST)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def book(data: dict[str, Any], channel: str = "orderbook", topic: str = "BTC-USD") -> Message:
    return Message(channel, topic, parse_delta(data))


async def test_a_topic_without_state_or_on_a_stream_channel_has_no_snapshot(
    redis_server: RedisServer,
) -> None:
    async with running(redis_server) as broker:
        for channel in POLICIES:
            assert await broker.snapshot(channel, "BTC-USD") is None
        await broker.publish([Message("trades", "BTC-USD", encode_data([1]))])
        assert await broker.snapshot("trades", "BTC-USD") is None
        # A book emptied by its publishes is a state: the empty book.
        await broker.publish([book({"bids": [[1, 1]]}), book({"bids": [[1, 0]]})])
        snapshot = await broker.snapshot("orderbook", "BTC-USD")
        assert snapshot is not None and snapshot.position.seq == 2
        assert orjson.dumps(snapshot.data) == b'{"snapshot":true,"bids":[],"asks":[],"checksum":0}'


async def test_the_state_expires_with_the_topic_ttl(redis_server: RedisServer) -> None:
    short = {
        name: HistoryPolicy(size=10, ttl=0.2, topic_ttl=0.3, mode=policy.mode)
        for name, policy in POLICIES.items()
    }
    async with running(redis_server, short) as broker:
        await broker.publish(
            [
                book({"bids": [[1, 1]], "asks": [[2, 1]]}),
                Message("ticker", "BTC-USD", encode_data({"last": 1})),
            ]
        )
        assert await broker.snapshot("orderbook", "BTC-USD") is not None
        assert await broker.snapshot("ticker", "BTC-USD") is not None
        keys = [meta_key("orderbook", "BTC-USD"), *book_keys("orderbook", "BTC-USD")]
        assert integer(command(redis_server, "EXISTS", *keys)) == 4
        await until(lambda: integer(command(redis_server, "EXISTS", *keys)) == 0, DEADLINE)
        assert await broker.snapshot("orderbook", "BTC-USD") is None
        assert await broker.snapshot("ticker", "BTC-USD") is None


async def test_a_new_epoch_starts_from_an_empty_book(redis_server: RedisServer) -> None:
    async with running(redis_server) as broker:
        feed = Feed(broker)
        await broker.publish([book({"bids": [[100, 1], [99, 1]], "asks": [[101, 1]]})])
        before = await broker.snapshot("orderbook", "BTC-USD")
        assert before is not None
        # The numbering is lost (as if the meta expired or went with a failover) while the
        # book's keys are still there: the next publish starts a new epoch and a new book.
        command(redis_server, "DEL", meta_key("orderbook", "BTC-USD"))
        await broker.publish([book({"bids": [[98, 2]]})])
        after = await broker.snapshot("orderbook", "BTC-USD")
        assert after is not None
        assert after.position.seq == 1 and after.position.epoch != before.position.epoch
        fresh = Book(4)
        fresh.apply(parse_delta({"bids": [[98, 2]]}))
        expected = delta_data(fresh.snapshot(), fresh.checksum())
        assert orjson.dumps(after.data) == orjson.dumps(expected)
        await until(lambda: len(feed.updates) == 2, DEADLINE)
        assert orjson.dumps(feed.updates[1].data) == orjson.dumps(
            {"bids": [["98", "2"]], "asks": [], "checksum": fresh.checksum()}
        )
        await feed.close()


async def test_a_batch_split_in_script_calls_applies_its_book_messages_in_order(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "CHUNK_MESSAGES", 3)
    batch = [book({"bids": [[100, n]], "asks": [[100 + n, 1]]}) for n in range(1, 11)]
    async with running(redis_server) as broker:
        feed = Feed(broker)
        assert await broker.publish(batch) == 10
        await until(lambda: len(feed.updates) == 10, DEADLINE)
        assert [u.seq for u in feed.updates] == list(range(1, 11))
        expected = Book(4)
        for message, update in zip(batch, feed.updates, strict=True):
            changes = expected.apply(message.data)
            want = delta_data(changes, expected.checksum())
            assert orjson.dumps(update.data) == orjson.dumps(want)
        snapshot = await broker.snapshot("orderbook", "BTC-USD")
        assert snapshot is not None and snapshot.position.seq == 10
        # the last qty of bid 100, and the 4 lowest asks kept
        assert orjson.loads(orjson.dumps(snapshot.data))["bids"] == [["100", "10"]]
        assert [p for p, _ in orjson.loads(orjson.dumps(snapshot.data))["asks"]] == [
            "101",
            "102",
            "103",
            "104",
        ]
        await feed.close()
