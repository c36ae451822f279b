"""The relay mends a topic whose live feed skipped updates (Gateway._mend, resync): it fills
the gap from the broker's history, or tells the subscribers with a reset. A scripted broker
plays the live feed; its history is what a Redis broker would hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
from prometheus_client import CollectorRegistry

from wsgateway.brokers.base import (
    NO_POSITION,
    RESYNC,
    BrokerStats,
    History,
    Message,
    Position,
    Resync,
    Update,
)
from wsgateway.brokers.memory import recent
from wsgateway.gateway import Gateway
from wsgateway.settings import Settings

from .conftest import until
from .fakes import Client, FakeTransport, RecordingCloser, subscribe


class ScriptedBroker:
    """Live batches as the test feeds them; history and positions as the test sets them."""

    def __init__(self) -> None:
        self.feed: asyncio.Queue[Sequence[Update] | Resync] = asyncio.Queue()
        self.kept: dict[str, list[Update]] = {}  # topic -> history, oldest first
        self.top: dict[str, Position] = {}
        self.unreachable = False

    connected = True

    def publish_numbered(self, *updates: Update, live: bool = True) -> None:
        for u in updates:
            self.kept.setdefault(u.topic, []).append(u)
            self.top[u.topic] = Position(u.epoch, u.seq)
        if live:
            self.feed.put_nowait(list(updates))

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> int:
        raise NotImplementedError

    async def batches(self) -> AsyncIterator[Sequence[Update] | Resync]:
        while True:
            yield await self.feed.get()

    async def positions(self, channel: str, topics: Sequence[str]) -> dict[str, Position]:
        if self.unreachable:
            raise ConnectionError("down")
        return {t: self.top.get(t, NO_POSITION) for t in topics}

    async def history(self, channel: str, topic: str, since: Position, limit: int) -> History:
        if self.unreachable:
            raise ConnectionError("down")
        top = self.top.get(topic, NO_POSITION)
        return History(top, recent(self.kept.get(topic, []), top, since, limit))

    def stats(self) -> BrokerStats:
        return BrokerStats()

    async def put_node(self, node: str, record: bytes, ttl: float) -> None: ...

    async def nodes(self) -> Mapping[str, bytes]:
        return {}


def u(seq: int, epoch: str = "e1", topic: str = "BTC-USD") -> Update:
    return Update("ticker", topic, seq, 1.0, {"n": seq}, epoch)


@contextlib.asynccontextmanager
async def relay() -> AsyncIterator[tuple[Gateway, ScriptedBroker, Client]]:
    broker = ScriptedBroker()
    gateway = Gateway(Settings(channels=("ticker",)), broker, CollectorRegistry())  # type: ignore[arg-type]
    channel = gateway.channels["ticker"]
    channel.admit("10.0.0.1")
    conn = channel.open(FakeTransport(), RecordingCloser(), "10.0.0.1")
    client = Client(conn, conn.transport, conn.closer, "10.0.0.1")  # type: ignore[arg-type]
    subscribe(channel, conn, ["BTC-USD"])
    task = asyncio.create_task(gateway.relay())
    yield gateway, broker, client
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert gateway.relay_failure is None


def frames(client: Client) -> list[tuple[str, str, int]]:
    return [(m["type"], m.get("epoch", ""), m["seq"]) for m in client.messages()]


def sample(gateway: Gateway, name: str, **labels: str) -> float | None:
    return gateway.registry.get_sample_value(name, {"channel": "ticker", **labels})


async def test_a_gap_in_the_live_feed_is_filled_from_history_in_order() -> None:
    async with relay() as (gateway, broker, client):
        broker.publish_numbered(u(1), u(2))
        broker.publish_numbered(u(3), u(4), live=False)  # lost on the way
        broker.publish_numbered(u(5))
        await until(lambda: len(client.messages()) == 5)
        assert [seq for _, _, seq in frames(client)] == [1, 2, 3, 4, 5]
        assert sample(gateway, "wsgateway_repairs_total", outcome="filled") == 1


async def test_updates_that_come_again_after_a_fill_are_dropped() -> None:
    async with relay() as (gateway, broker, client):
        broker.publish_numbered(u(1))
        broker.publish_numbered(u(2), u(3), live=False)
        broker.feed.put_nowait([u(3)])  # the gap: history fills 2 and 3
        broker.feed.put_nowait([u(2), u(3)])  # then the late live copies
        broker.publish_numbered(u(4))
        await until(lambda: len(client.messages()) == 4)
        await asyncio.sleep(0.01)
        assert [seq for _, _, seq in frames(client)] == [1, 2, 3, 4]
        # the late copies of 2 and 3, and 4, which the fill had reached already
        assert sample(gateway, "wsgateway_duplicate_updates_total") == 3


async def test_a_gap_the_history_no_longer_covers_is_a_reset() -> None:
    async with relay() as (gateway, broker, client):
        broker.publish_numbered(u(1))
        broker.kept["BTC-USD"].clear()  # trimmed
        broker.publish_numbered(u(2), u(3), live=False)
        broker.kept["BTC-USD"] = []
        broker.publish_numbered(u(4))
        await until(lambda: len(client.messages()) == 3)
        assert frames(client) == [("update", "e1", 1), ("reset", "e1", 3), ("update", "", 4)]
        assert sample(gateway, "wsgateway_repairs_total", outcome="reset") == 1


async def test_a_new_epoch_in_the_live_feed_is_a_reset_then_the_update() -> None:
    async with relay() as (_gateway, broker, client):
        broker.publish_numbered(u(1), u(2))
        broker.publish_numbered(u(1, "e2"))
        await until(lambda: len(client.messages()) == 4)
        assert frames(client)[2:] == [("reset", "e2", 0), ("update", "e2", 1)]


async def test_a_new_epoch_seen_late_restarts_from_its_history_when_it_has_all_of_it() -> None:
    async with relay() as (_gateway, broker, client):
        broker.publish_numbered(u(1))
        broker.publish_numbered(u(1, "e2"), u(2, "e2"), live=False)
        broker.publish_numbered(u(3, "e2"))
        await until(lambda: len(client.messages()) == 5)
        assert frames(client) == [
            ("update", "e1", 1),
            ("reset", "e2", 0),
            ("update", "e2", 1),
            ("update", "", 2),
            ("update", "", 3),
        ]


async def test_resync_fills_topics_published_while_the_feed_was_down() -> None:
    async with relay() as (_gateway, broker, client):
        broker.publish_numbered(u(1))
        await until(lambda: len(client.messages()) == 1)
        broker.publish_numbered(u(2), u(3), live=False)
        broker.feed.put_nowait(RESYNC)
        await until(lambda: len(client.messages()) == 3)
        broker.publish_numbered(u(3))  # a late live copy
        broker.publish_numbered(u(4))
        await until(lambda: len(client.messages()) == 4)
        assert [seq for _, _, seq in frames(client)] == [1, 2, 3, 4]


async def test_resync_after_the_broker_lost_everything_resets_the_subscribers() -> None:
    async with relay() as (gateway, broker, client):
        broker.publish_numbered(u(1), u(2))
        await until(lambda: len(client.messages()) == 2)
        broker.kept.clear()
        broker.top.clear()  # an empty Redis
        broker.feed.put_nowait(RESYNC)
        broker.publish_numbered(u(1, "e7"))
        await until(lambda: len(client.messages()) == 4)
        # The new epoch's first update was published before the resync read the position:
        # the subscribers restart at its seq 0 and get it from history, then live.
        assert frames(client)[2:] == [("reset", "e7", 0), ("update", "e7", 1)]
        assert sample(gateway, "wsgateway_repairs_total", outcome="reset") == 1


@pytest.mark.parametrize("when", ["resync", "gap"])
async def test_a_broker_that_cannot_answer_a_repair_leads_to_a_reset_not_a_crash(
    when: str,
) -> None:
    async with relay() as (_gateway, broker, client):
        broker.publish_numbered(u(1))
        await until(lambda: len(client.messages()) == 1)
        broker.unreachable = True
        if when == "resync":
            broker.feed.put_nowait(RESYNC)  # nothing can be checked: waits for the next
            broker.publish_numbered(u(2))
            await until(lambda: len(client.messages()) == 2)
            assert [seq for _, _, seq in frames(client)] == [1, 2]
        else:
            broker.publish_numbered(u(3))
            await until(lambda: len(client.messages()) == 3)
            assert frames(client)[1:] == [("reset", "e1", 2), ("update", "", 3)]
