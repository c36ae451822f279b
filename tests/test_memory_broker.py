"""Unit tests for the memory broker's backpressure and stop: no socket, one event loop."""

from __future__ import annotations

import asyncio

import pytest

from wsgateway.brokers import Message
from wsgateway.brokers.memory import QUEUE_BATCHES, MemoryBroker


def message(topic: str = "T") -> Message:
    return Message("ticker", topic, {"n": 1})


async def full_broker() -> MemoryBroker:
    broker = MemoryBroker(clock=lambda: 1.0)
    await broker.start()
    for _ in range(QUEUE_BATCHES):
        await broker.publish([message()])
    return broker


async def test_a_publisher_waiting_for_room_is_refused_when_the_broker_stops() -> None:
    broker = await full_broker()
    waiting = asyncio.create_task(broker.publish([message()]))
    await asyncio.sleep(0)  # let it reach the full queue
    assert not waiting.done()
    await broker.stop()
    with pytest.raises(ConnectionError, match="stopped"):
        await asyncio.wait_for(waiting, 5)
    # Those queued behind it on the lock are refused too, not left waiting.
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(broker.publish([message()]), 5)


async def test_a_publisher_waiting_for_room_goes_on_once_the_relay_takes_a_batch() -> None:
    broker = await full_broker()
    waiting = asyncio.create_task(broker.publish([message(), message("U")]))
    await asyncio.sleep(0)
    assert not waiting.done()
    batches = broker.batches()
    first = await anext(batches)
    assert [u.seq for u in first] == [1]
    assert await asyncio.wait_for(waiting, 5) == 2
    seqs = []
    for _ in range(QUEUE_BATCHES):
        seqs.extend((u.topic, u.seq) for u in await anext(batches))
    assert seqs[-2:] == [("T", QUEUE_BATCHES + 1), ("U", 1)]


async def test_a_refused_batch_takes_no_seq() -> None:
    broker = await full_broker()
    waiting = asyncio.create_task(broker.publish([message(), message()]))
    await asyncio.sleep(0)
    waiting.cancel()  # the publisher's request went away while it waited
    with pytest.raises(asyncio.CancelledError):
        await waiting
    batches = broker.batches()
    await anext(batches)  # room for one batch
    await broker.publish([message()])
    seqs = [u.seq for _ in range(QUEUE_BATCHES) for u in await anext(batches)]
    assert seqs[-2:] == [QUEUE_BATCHES, QUEUE_BATCHES + 1]  # no gap where the two were


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
