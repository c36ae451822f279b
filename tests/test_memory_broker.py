"""Unit tests for the memory broker's backpressure and stop: no socket, one event loop."""

from __future__ import annotations

import asyncio

import pytest

from wsgateway.brokers import (
    NO_POSITION,
    HistoryPolicy,
    Message,
    Position,
    Resync,
    Update,
)
from wsgateway.brokers.memory import QUEUE_BATCHES, MemoryBroker

from .fakes import FakeClock


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


# -- numbering, history and expiry ---------------------------------------------------------------


async def history_broker(
    clock: FakeClock, size: int = 3, ttl: float = 60.0, topic_ttl: float = 600.0
) -> MemoryBroker:
    broker = MemoryBroker({"ticker": HistoryPolicy(size, ttl, topic_ttl)}, clock)
    await broker.start()
    return broker


async def drain(broker: MemoryBroker) -> list[Update]:
    """Every update queued so far, as the relay would take them."""
    taken: list[Update] = []
    batches = broker.batches()
    assert broker._queue is not None
    while True:
        batch = await anext(batches)
        assert not isinstance(batch, Resync)
        taken.extend(batch)
        if broker._queue.empty():
            break
    await batches.aclose()
    return taken


async def test_each_topic_counts_from_1_in_its_own_epoch() -> None:
    broker = await history_broker(FakeClock())
    await broker.publish([message("A"), message("B"), message("A")])
    updates = await drain(broker)
    assert [(u.topic, u.seq) for u in updates] == [("A", 1), ("B", 1), ("A", 2)]
    assert updates[0].epoch == updates[2].epoch != updates[1].epoch
    assert len(updates[0].epoch) == 8
    positions = await broker.positions("ticker", ["A", "B", "never"])
    assert positions == {
        "A": Position(updates[0].epoch, 2),
        "B": Position(updates[1].epoch, 1),
        "never": NO_POSITION,
    }
    assert len(broker._topics) == 2  # asking about "never" created nothing


async def test_history_gives_what_was_missed_while_it_has_all_of_it() -> None:
    broker = await history_broker(FakeClock(), size=3)
    for _ in range(5):
        await broker.publish([message("A")])
    epoch = (await broker.positions("ticker", ["A"]))["A"].epoch
    answer = await broker.history("ticker", "A", Position(epoch, 2), 100)
    assert answer.position == Position(epoch, 5)
    assert answer.updates is not None and [u.seq for u in answer.updates] == [3, 4, 5]
    assert (await broker.history("ticker", "A", Position(epoch, 5), 100)).updates == []
    # Trimmed (only the last 3 are kept), over the limit, another epoch: not recoverable.
    assert (await broker.history("ticker", "A", Position(epoch, 1), 100)).updates is None
    assert (await broker.history("ticker", "A", Position(epoch, 3), 1)).updates is None
    assert (await broker.history("ticker", "A", Position("other", 3), 100)).updates is None
    # Ahead of the topic (a position from a lost past): not recoverable either.
    assert (await broker.history("ticker", "A", Position(epoch, 9), 100)).updates is None


async def test_the_position_of_a_topic_without_state_resumes_from_its_first_update() -> None:
    broker = await history_broker(FakeClock(), size=10)
    await broker.publish([message("A"), message("A")])
    answer = await broker.history("ticker", "A", NO_POSITION, 100)
    assert answer.updates is not None and [u.seq for u in answer.updates] == [1, 2]
    missing = await broker.history("ticker", "never", NO_POSITION, 100)
    assert (missing.position, missing.updates) == (NO_POSITION, [])


async def test_history_is_dropped_after_its_ttl_and_numbering_after_the_topic_ttl() -> None:
    clock = FakeClock()
    broker = await history_broker(clock, size=10, ttl=60, topic_ttl=600)
    await broker.publish([message("A"), message("A")])
    epoch = (await broker.positions("ticker", ["A"]))["A"].epoch
    clock.advance(61)
    gone = await broker.history("ticker", "A", Position(epoch, 0), 100)
    assert (gone.position, gone.updates) == (Position(epoch, 2), None)  # numbering kept
    clock.advance(600)
    assert (await broker.positions("ticker", ["A"]))["A"] == NO_POSITION
    await broker.publish([message("A")])
    restarted = (await broker.positions("ticker", ["A"]))["A"]
    assert restarted.seq == 1 and restarted.epoch != epoch


async def test_per_topic_state_is_bounded_by_the_topics_published_recently() -> None:
    """200,000 distinct topics published once are all forgotten after topic_ttl: the state
    does not grow with every topic ever published."""
    clock = FakeClock()
    broker = await history_broker(clock, size=2, ttl=60, topic_ttl=120)
    for start in range(0, 200_000, 10_000):
        await broker.publish([message(f"T{n}") for n in range(start, start + 10_000)])
        await drain(broker)
    assert len(broker._topics) == 200_000
    clock.advance(61)
    await broker.publish([message("fresh")])
    assert len(broker._with_history) == 1  # every other history dropped
    clock.advance(60)
    await broker.publish([message("fresh")])
    assert len(broker._topics) == 1
