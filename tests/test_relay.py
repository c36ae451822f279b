"""The relay loop (Gateway.relay) with the memory broker and fake transports: a burst goes
out in slices; a reader that stops holds the relay for one check, not its grace, and is cut,
never the others; it does not hold the feed of another channel either."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from wsgateway.brokers.memory import MemoryBroker
from wsgateway.gateway import Gateway
from wsgateway.settings import Limits, Settings

from .conftest import until
from .fakes import Client, FakeTransport, RecordingCloser, decode_frames, subscribe

LIMIT = 4096


@dataclass
class Relay:
    gateway: Gateway

    def open(self, transport: FakeTransport | None = None, channel_name: str = "trades") -> Client:
        channel = self.gateway.channels[channel_name]
        transport = transport if transport is not None else FakeTransport()
        closer = RecordingCloser()
        channel.admit("10.0.0.1")
        conn = channel.open(transport, closer, "10.0.0.1")
        subscribe(channel, conn, ["*"])
        return Client(conn, transport, closer, "10.0.0.1")


@contextlib.asynccontextmanager
async def running(grace: float, channels: tuple[str, ...]) -> AsyncIterator[Relay]:
    limits = Limits(max_outbox_bytes=LIMIT, slow_consumer_grace=grace, max_connections_per_ip=10)
    settings = Settings(channels=channels, defaults=limits)
    gateway = Gateway(settings, MemoryBroker(), CollectorRegistry())
    await gateway.broker.start()
    task = asyncio.create_task(gateway.relay())
    yield Relay(gateway)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await gateway.broker.stop()
    assert gateway.relay_failure is None


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    async with running(0.05, ("trades",)) as relay:
        yield relay


def batch(count: int, channel: str = "trades") -> list[dict[str, object]]:
    return [
        {"channel": channel, "topic": "T", "data": {"i": i, "p": "x" * 150}} for i in range(count)
    ]


async def test_a_batch_five_times_the_limit_goes_out_in_slices_to_a_fast_client(
    relay: Relay,
) -> None:
    fast = relay.open()
    await relay.gateway.publish_many(batch(100))  # ~20 KB of frames in one batch
    await until(lambda: len(fast.messages()) == 100)

    assert [m["seq"] for m in fast.messages()] == list(range(1, 101))
    assert fast.closer.calls == []
    # Written between slices, never the whole batch at once.
    slice_bytes = relay.gateway.channels["trades"].slice_bytes
    assert len(fast.transport.writes) >= 4
    assert max(map(len, fast.transport.writes)) < slice_bytes + 300


async def test_the_relay_does_not_wait_out_a_stopped_reader_it_is_cut_and_the_feed_goes_on(
    relay: Relay,
) -> None:
    fast = relay.open()
    stopped = relay.open(FakeTransport(stopped=True))
    await relay.gateway.publish_many(batch(100))
    await until(lambda: len(fast.messages()) == 100)

    assert stopped.closer.calls == [(1013, "slow consumer")]
    assert fast.closer.calls == []
    assert [m["seq"] for m in fast.messages()] == list(range(1, 101))
    got = [m["seq"] for m in decode_frames(stopped.transport.data)]
    assert got == list(range(1, len(got) + 1))
    # It was cut over the limit, never past the hard cap: what it holds is bounded.
    assert LIMIT < stopped.transport.buffer_size <= 2 * LIMIT
    channel = relay.gateway.channels["trades"]
    assert channel.footprint()["lagging"] == 0
    assert channel.footprint()["held"] == 0


async def test_a_stopped_reader_of_one_channel_does_not_hold_the_feed_of_another() -> None:
    # A grace of 60 s: the relay used to wait that long for the stopped reader, and the
    # ticker's reader with it (there is one relay for every channel).
    async with running(60.0, ("trades", "ticker")) as relay:
        stopped = relay.open(FakeTransport(stopped=True), "trades")
        fast = relay.open(channel_name="ticker")
        for _ in range(10):
            await relay.gateway.publish_many(batch(10, "trades") + batch(10, "ticker"))
        await until(lambda: len(fast.messages()) == 100, 20)

        assert [m["seq"] for m in fast.messages()] == list(range(1, 101))
        assert fast.closer.calls == []
        # Cut at the hard cap, long before its grace.
        assert stopped.closer.calls == [(1013, "slow consumer")]
        assert LIMIT < stopped.transport.buffer_size <= 2 * LIMIT
        assert relay.gateway.channels["trades"].footprint()["lagging"] == 0
