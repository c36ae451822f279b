"""The relay's resync when the broker's feed comes back with a topic in a new epoch (more
repairs in test_repair.py), and a subscribe the broker cannot answer, against a scripted
broker: the test says what the live feed brings and what the
broker's history holds, fake transports record what each client gets. No socket, no
timing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from wsgateway.brokers import RESYNC
from wsgateway.errors import Unavailable
from wsgateway.gateway import Gateway
from wsgateway.protocol import Subscribe
from wsgateway.settings import Limits, Settings

from .fakes import FakeTransport, RecordingCloser, make_update, subscribe, written_messages
from .scripted_broker import ScriptedBroker

CHANNEL = "ticker"
# Stream semantics (a topic relayed here is joined without the broker): the default mode of
# "ticker" would be last, whose subscribers need the broker's snapshot.
STREAM_SETTINGS = Settings(channels=(CHANNEL,), defaults=Limits(mode="stream"))


@contextlib.asynccontextmanager
async def relaying() -> AsyncIterator[tuple[Gateway, ScriptedBroker, FakeTransport]]:
    """A gateway relaying the scripted broker's feed, with one client on BTC-USD."""
    broker = ScriptedBroker()
    gateway = Gateway(STREAM_SETTINGS, broker, CollectorRegistry())
    channel = gateway.channels[CHANNEL]
    transport = FakeTransport()
    channel.admit("10.0.0.1")
    conn = channel.open(transport, RecordingCloser(), "10.0.0.1")
    subscribe(channel, conn, ["BTC-USD"])
    task = asyncio.create_task(gateway.relay())
    try:
        yield gateway, broker, transport
    finally:
        # The feed ends after what the test put in: the relay has handled all of it.
        await broker.stop()
        await task
        await asyncio.sleep(0)  # the flush queued in the relay's last turn runs
        assert gateway.relay_failure is None


def received(transport: FakeTransport) -> list[tuple[Any, ...]]:
    """What the client read: updates as (seq, epoch named or None), resets as tuples."""
    found: list[tuple[Any, ...]] = []
    for message in written_messages(transport):
        if message["type"] == "update":
            found.append(("update", message["seq"], message.get("epoch")))
        elif message["type"] == "reset":
            found.append(("reset", message["epoch"], message["seq"]))
    return found


def repairs(gateway: Gateway, outcome: str) -> float | None:
    return gateway.registry.get_sample_value(
        "wsgateway_repairs_total", {"channel": CHANNEL, "outcome": outcome}
    )


async def test_a_new_epoch_found_by_resync_reaches_the_client_whole_after_a_reset() -> None:
    # Redis restarted empty, and another node published 1..3 of a new epoch before this
    # node's feed came back: the client is reset to the new epoch's start and gets 1..3.
    async with relaying() as (gateway, broker, transport):
        broker.feed.put_nowait([make_update(seq=1, epoch="e1"), make_update(seq=2, epoch="e1")])
        broker.server_holds("BTC-USD", "e2", range(1, 4))
        broker.feed.put_nowait(RESYNC)
        broker.feed.put_nowait([make_update(seq=3, epoch="e2"), make_update(seq=4, epoch="e2")])
    assert received(transport) == [
        ("update", 1, "e1"),
        ("update", 2, None),
        ("reset", "e2", 0),
        ("update", 1, "e2"),
        ("update", 2, None),
        ("update", 3, None),
        ("update", 4, None),
    ]
    assert (repairs(gateway, "filled"), repairs(gateway, "reset")) == (0, 1)


async def test_a_new_epoch_whose_start_is_no_longer_kept_resets_to_its_top() -> None:
    async with relaying() as (gateway, broker, transport):
        broker.feed.put_nowait([make_update(seq=1, epoch="e1")])
        broker.server_holds("BTC-USD", "e2", range(3, 5))  # 1 and 2 were trimmed
        broker.feed.put_nowait(RESYNC)
        broker.feed.put_nowait([make_update(seq=5, epoch="e2")])
    assert received(transport) == [("update", 1, "e1"), ("reset", "e2", 4), ("update", 5, None)]
    assert repairs(gateway, "reset") == 1


async def test_a_subscribe_the_broker_cannot_answer_subscribes_nothing_not_even_known_topics() -> (
    None
):
    broker = ScriptedBroker()
    broker.unreachable = True
    gateway = Gateway(STREAM_SETTINGS, broker, CollectorRegistry())
    channel = gateway.channels[CHANNEL]
    channel.positions.advance("BTC-USD", "e1", 4)  # relayed here: known without the broker
    channel.admit("10.0.0.1")
    conn = channel.open(FakeTransport(), RecordingCloser(), "10.0.0.1")
    with pytest.raises(Unavailable, match="nothing was subscribed") as refused:
        await gateway.subscribe(channel, conn, Subscribe(("BTC-USD", "ETH-USD"), 3))
    assert refused.value.request_id == 3
    assert conn.topics == set()
    assert not channel.has_subscribers("BTC-USD") and not channel.has_subscribers("ETH-USD")
    # alone, the known topic needs no broker
    await gateway.subscribe(channel, conn, Subscribe(("BTC-USD",), 4))
    assert conn.topics == {"BTC-USD"}
    # a failed request leaves what an earlier one subscribed
    with pytest.raises(Unavailable):
        await gateway.subscribe(channel, conn, Subscribe(("BTC-USD", "ETH-USD"), 5))
    assert conn.topics == {"BTC-USD"} and channel.has_subscribers("BTC-USD")
