"""The memory broker: numbering, and backpressure on publishers while the relay is busy."""

from __future__ import annotations

import asyncio

import pytest

from wsgateway.brokers.base import Message
from wsgateway.brokers.memory import MemoryBroker

MESSAGE = Message("trades", "T", {"p": 1})


async def turns(count: int = 10) -> None:
    """Let the loop run a few turns (to show that something did not happen)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_publishers_wait_while_max_queued_messages_are_not_through_the_relay() -> None:
    broker = MemoryBroker(max_queued=5)
    await broker.start()
    batches = broker.batches()
    assert await broker.publish([MESSAGE] * 3) == 3
    assert await broker.publish([MESSAGE] * 2) == 2  # 5 queued: full
    waiting = asyncio.create_task(broker.publish([MESSAGE]))
    await turns()
    assert not waiting.done()

    first = await anext(batches)  # taken, but the relay is still working on it
    await turns()
    assert not waiting.done()
    second = await anext(batches)  # done with the first: room for three more
    assert await asyncio.wait_for(waiting, 5) == 1
    third = await anext(batches)
    assert [u.seq for u in (*first, *second, *third)] == [1, 2, 3, 4, 5, 6]
    await broker.stop()


async def test_stopping_wakes_a_publisher_waiting_for_room() -> None:
    broker = MemoryBroker(max_queued=1)
    await broker.start()
    await broker.publish([MESSAGE])
    waiting = asyncio.create_task(broker.publish([MESSAGE]))
    await turns()
    assert not waiting.done()

    await broker.stop()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 5)
