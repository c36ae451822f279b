"""The relay mends a topic whose live feed skipped updates (Gateway._mend, resync): it fills
the gap from the broker's history, or tells the subscribers with a reset. A scripted broker
plays the live feed; its history is what a Redis broker would hold (more in
test_relay_repair.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from wsgateway.brokers.base import RESYNC, Update
from wsgateway.gateway import Gateway
from wsgateway.settings import Settings

from .conftest import until
from .fakes import Client, FakeTransport, RecordingCloser, subscribe
from .scripted_broker import ScriptedBroker


def u(seq: int, epoch: str = "e1", topic: str = "BTC-USD") -> Update:
    return Update("ticker", topic, seq, 1.0, {"n": seq}, epoch)


@contextlib.asynccontextmanager
async def relay() -> AsyncIterator[tuple[Gateway, ScriptedBroker, Client]]:
    broker = ScriptedBroker()
    gateway = Gateway(Settings(channels=("ticker",)), broker, CollectorRegistry())
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
        broker.published(u(1), u(2))
        broker.published(u(3), u(4), live=False)  # lost on the way
        broker.published(u(5))
        await until(lambda: len(client.messages()) == 5)
        assert [seq for _, _, seq in frames(client)] == [1, 2, 3, 4, 5]
        assert sample(gateway, "wsgateway_repairs_total", outcome="filled") == 1


async def test_updates_that_come_again_after_a_fill_are_dropped() -> None:
    async with relay() as (gateway, broker, client):
        broker.published(u(1))
        broker.published(u(2), u(3), live=False)
        broker.feed.put_nowait([u(3)])  # the gap: history fills 2 and 3
        broker.feed.put_nowait([u(2), u(3)])  # then the late live copies
        broker.published(u(4))
        await until(lambda: len(client.messages()) == 4)
        await asyncio.sleep(0.01)
        assert [seq for _, _, seq in frames(client)] == [1, 2, 3, 4]
        # the late copies of 2 and 3, and 4, which the fill had reached already
        assert sample(gateway, "wsgateway_duplicate_updates_total") == 3


async def test_a_gap_the_history_no_longer_covers_is_a_reset() -> None:
    async with relay() as (gateway, broker, client):
        broker.published(u(1))
        broker.held["BTC-USD"].clear()  # trimmed
        broker.published(u(2), u(3), live=False)
        broker.held["BTC-USD"] = []
        broker.published(u(4))
        await until(lambda: len(client.messages()) == 3)
        assert frames(client) == [("update", "e1", 1), ("reset", "e1", 3), ("update", "", 4)]
        assert sample(gateway, "wsgateway_repairs_total", outcome="reset") == 1


async def test_a_new_epoch_in_the_live_feed_is_a_reset_then_the_update() -> None:
    async with relay() as (_gateway, broker, client):
        broker.published(u(1), u(2))
        broker.published(u(1, "e2"))
        await until(lambda: len(client.messages()) == 4)
        assert frames(client)[2:] == [("reset", "e2", 0), ("update", "e2", 1)]


async def test_a_new_epoch_seen_late_restarts_from_its_history_when_it_has_all_of_it() -> None:
    async with relay() as (_gateway, broker, client):
        broker.published(u(1))
        broker.published(u(1, "e2"), u(2, "e2"), live=False)
        broker.published(u(3, "e2"))
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
        broker.published(u(1))
        await until(lambda: len(client.messages()) == 1)
        broker.published(u(2), u(3), live=False)
        broker.feed.put_nowait(RESYNC)
        await until(lambda: len(client.messages()) == 3)
        broker.published(u(3))  # a late live copy
        broker.published(u(4))
        await until(lambda: len(client.messages()) == 4)
        assert [seq for _, _, seq in frames(client)] == [1, 2, 3, 4]


async def test_resync_after_the_broker_lost_everything_resets_the_subscribers() -> None:
    async with relay() as (gateway, broker, client):
        broker.published(u(1), u(2))
        await until(lambda: len(client.messages()) == 2)
        broker.held.clear()
        broker.tops.clear()  # an empty Redis
        broker.feed.put_nowait(RESYNC)
        broker.published(u(1, "e7"))
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
        broker.published(u(1))
        await until(lambda: len(client.messages()) == 1)
        broker.unreachable = True
        if when == "resync":
            broker.feed.put_nowait(RESYNC)  # nothing can be checked: waits for the next
            broker.published(u(2))
            await until(lambda: len(client.messages()) == 2)
            assert [seq for _, _, seq in frames(client)] == [1, 2]
        else:
            broker.published(u(3))
            await until(lambda: len(client.messages()) == 3)
            assert frames(client)[1:] == [("reset", "e1", 2), ("update", "", 3)]
