"""The SDK against real gateway processes: connections cut under it mid-feed, a node
drained and replaced, history too short to resume, refusals. Publishes go through the
real HTTP API; the network faults come from a TCP relay between client and node, which
aborts both halves of a connection the way a lost network does (no close frame)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets

from wsgateway.client import Client, ConnectRefused, Event, Gap, Snapshot, Update

from .conftest import until
from .processes import GatewayNode, http_json

TOPICS = ("BTC-USD", "ETH-USD", "SOL-USD")
FAST = (0.05, 0.5)
OPEN = ("--set", "connections_per_minute=100000")


class Relay:
    """A TCP relay on 127.0.0.1 to ``upstream`` (a port); ``cut()`` aborts every relayed
    connection, ``upstream = None`` refuses new ones (closes them at once)."""

    def __init__(self, upstream: int) -> None:
        self.upstream: int | None = upstream
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.upstream is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self.tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        self.pairs.discard(pair)
        for task in pumps:
            task.cancel()
        writer.transport.abort()
        up_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def cut(self) -> int:
        pairs = list(self.pairs)
        for client_side, node_side in pairs:
            client_side.transport.abort()
            node_side.transport.abort()
        return len(pairs)

    async def close(self) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def relay_to(port: int) -> AsyncIterator[Relay]:
    relay = await Relay(port).start()
    try:
        yield relay
    finally:
        await relay.close()


async def publish(node: GatewayNode, start: int, stop: int, pause: float = 0.01) -> None:
    """Messages start..stop-1 of every topic, in batches of 10 per topic."""
    async with aiohttp.ClientSession() as session:
        for first in range(start, stop, 10):
            batch = [
                {"channel": "ticker", "topic": topic, "data": {"n": n}}
                for n in range(first, min(first + 10, stop))
                for topic in TOPICS
            ]
            url = f"{node.http}/api/publish"
            async with session.post(url, json={"messages": batch}) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(pause)


async def collect(client: Client, last: int, events: list[Event]) -> None:
    """Read until an update with seq ``last`` of every topic was yielded."""
    reached: set[str] = set()
    async for event in client:
        events.append(event)
        if isinstance(event, Update) and event.seq >= last:
            reached.add(event.topic)
            if reached == set(TOPICS):
                return


async def subscribed(client: Client) -> None:
    """Until the client's subscribe was answered (each topic holds seq 1 before the feed)."""
    await until(lambda: all(client.position(topic)[1] == 1 for topic in TOPICS), 10)


def assert_only_updates_after_the_snapshots(events: list[Event]) -> None:
    """Nothing but updates, after the snapshot of seq 1 that a ``last`` channel (ticker)
    sends each topic on the first subscribe (a resume that recovers gets none)."""
    others = [e for e in events if not isinstance(e, Update)]
    assert all(isinstance(e, Snapshot) and e.seq == 1 for e in others), others
    assert len({e.topic for e in others}) == len(others)


def seqs(events: list[Event], topic: str) -> list[int]:
    return [e.seq for e in events if isinstance(e, Update) and e.topic == topic]


@pytest.mark.e2e
async def test_connections_cut_mid_feed_lose_nothing_and_repeat_nothing() -> None:
    total = 400
    with GatewayNode(*OPEN, "--set", "history_size=2000") as node:
        await publish(node, 0, 1)  # seq 1 of each topic: the client starts after it
        async with relay_to(node.port) as relay:
            client = Client(relay.url, "ticker", TOPICS, backoff=FAST)
            events: list[Event] = []
            async with client:
                reader = asyncio.create_task(collect(client, total, events))
                await subscribed(client)
                feed = asyncio.create_task(publish(node, 1, total, pause=0.03))
                cuts = 0
                while not feed.done() or cuts < 3:  # a fast machine may finish the feed first
                    await asyncio.sleep(0.25)
                    cuts += relay.cut() > 0
                await feed
                await asyncio.wait_for(reader, 15)
    assert cuts >= 3
    assert client.connections >= 3
    assert_only_updates_after_the_snapshots(events)
    for topic in TOPICS:
        assert seqs(events, topic) == list(range(2, total + 1)), topic
    assert any(isinstance(e, Update) and e.replayed for e in events)
    assert client.last("BTC-USD") == {"n": total - 1}


@pytest.mark.e2e
async def test_a_drained_node_is_left_for_another_on_the_same_redis_without_loss(
    redis_server: Any,
) -> None:
    total = 300
    broker = ("--set", f"broker={redis_server.url}", "--set", "drain_seconds=0.2")
    with GatewayNode(*OPEN, *broker) as first, GatewayNode(*OPEN, *broker) as second:
        await publish(second, 0, 1)
        async with relay_to(first.port) as relay:
            client = Client(relay.url, "ticker", TOPICS, backoff=FAST)
            events: list[Event] = []
            async with client:
                reader = asyncio.create_task(collect(client, total, events))
                await subscribed(client)
                feed = asyncio.create_task(publish(second, 1, total, pause=0.03))
                await until(lambda: len(events) >= 30, 10)
                relay.upstream = second.port  # the load balancer's next pick
                status, _ = await asyncio.to_thread(
                    http_json, "POST", f"{first.http}/api/drain", {}
                )
                assert status == 202
                assert not feed.done()  # the drain comes mid-feed
                await feed
                await asyncio.wait_for(reader, 15)
            assert first.wait(timeout=10) == 0
    assert client.connections == 2
    assert_only_updates_after_the_snapshots(events)
    for topic in TOPICS:
        assert seqs(events, topic) == list(range(2, total + 1)), topic


@pytest.mark.e2e
async def test_updates_beyond_the_history_are_a_gap_and_the_stream_goes_on() -> None:
    with GatewayNode(*OPEN, "--set", "history_size=10") as node:
        await publish(node, 0, 5)
        async with relay_to(node.port) as relay:
            client = Client(relay.url, "ticker", TOPICS, backoff=FAST)
            events: list[Event] = []
            async with client:
                reader = asyncio.create_task(collect(client, 61, events))
                await until(lambda: client.position("BTC-USD")[1] == 5, 10)
                await publish(node, 5, 10)
                await until(lambda: all(client.position(t)[1] == 10 for t in TOPICS), 10)
                relay.upstream = None  # the network is down...
                relay.cut()
                await publish(node, 10, 60)  # ...while 50 per topic pass, history holds 10
                relay.upstream = node.port
                await until(lambda: len([e for e in events if isinstance(e, Gap)]) == 3, 10)
                await publish(node, 60, 61)
                await asyncio.wait_for(reader, 10)
    gaps = [e for e in events if isinstance(e, Gap)]
    assert sorted(g.topic for g in gaps) == sorted(TOPICS)
    for gap in gaps:
        assert (gap.from_seq, gap.previous[1]) == (11, 10)
        assert gap.epoch == gap.previous[0]
        after = seqs(events, gap.topic)
        assert after[:5] == [6, 7, 8, 9, 10]
        assert after[5] == gap.to_seq + 1 and after[-1] == 61


@pytest.mark.e2e
async def test_an_unknown_channel_raises_and_a_full_channel_is_waited_for() -> None:
    with GatewayNode(*OPEN, "--set", "channel.ticker.max_connections=1") as node:
        with pytest.raises(ConnectRefused, match="404 unknown_channel"):
            async for _ in Client(node.http, "nope", ["A"], backoff=FAST):
                pass
        holder = await websockets.connect(f"ws://{node.address}/ws/ticker")
        client = Client(node.http, "ticker", ["BTC-USD"], backoff=FAST)
        async with client:
            first = asyncio.create_task(anext(client))
            await asyncio.sleep(1.0)  # refused with 503 capacity meanwhile, and retrying
            assert not first.done()
            await holder.close()
            await publish_one_until(node, first)
            event = await first
            # an update, or the snapshot of one published while the client waited (ticker
            # keeps its last value)
            assert isinstance(event, Update | Snapshot) and event.topic == "BTC-USD"
        metrics = await asyncio.to_thread(node_metrics, node)
        refused = re.search(
            r'wsgateway_connections_rejected_total\{channel="ticker",reason="capacity"\} (\S+)',
            metrics,
        )
        assert refused is not None and float(refused.group(1)) >= 2


async def publish_one_until(node: GatewayNode, done: asyncio.Task[Any]) -> None:
    """Publish one BTC-USD update every 0.1 s until the client took one."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if done.done():
                return
            body = {"channel": "ticker", "topic": "BTC-USD", "data": {}}
            async with session.post(f"{node.http}/api/publish", json=body) as response:
                assert response.status == 200
            await asyncio.sleep(0.1)


def node_metrics(node: GatewayNode) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{node.http}/metrics", timeout=5) as response:
        return str(response.read().decode())
