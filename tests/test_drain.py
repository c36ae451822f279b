"""The drain plan (wsgateway/drain.py): pure, with a fake random source and seeded ones."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import MutableSequence, Sequence
from typing import Any

import pytest

from wsgateway.drain import BATCHES_PER_SECOND, plan_drain


class FakeRandom(random.Random):
    """Shuffles by reversing; samples the last k of the population: every choice visible."""

    def shuffle(self, x: MutableSequence[Any], random: Any = None) -> None:
        x.reverse()

    def sample(self, population: Sequence[Any], k: int, *, counts: Any = None) -> list[Any]:
        return list(population)[len(population) - k :] if k else []


def test_no_clients_no_batches() -> None:
    plan = plan_drain([], 10.0, FakeRandom())
    assert plan.batches == () and plan.clients == 0 and plan.seconds == 0.0


def test_even_batches_ten_per_second_in_shuffled_order() -> None:
    plan = plan_drain(list(range(40)), 2.0, FakeRandom())
    assert plan.seconds == 2.0 and plan.clients == 40
    assert [batch.at for batch in plan.batches] == pytest.approx([i * 0.1 for i in range(20)])
    # Reversed by the fake shuffle, dealt two per batch.
    assert [batch.clients for batch in plan.batches] == [
        (39 - 2 * i, 38 - 2 * i) for i in range(20)
    ]


def test_the_larger_batches_are_the_sampled_slots() -> None:
    # 23 clients over 10 slots: 2 each, and one more in the 3 slots the sample picks (7, 8, 9).
    plan = plan_drain(list(range(23)), 1.0, FakeRandom())
    assert [len(batch.clients) for batch in plan.batches] == [2] * 7 + [3] * 3


def test_fewer_clients_than_slots_are_scattered_not_packed_at_the_start() -> None:
    plan = plan_drain(["a", "b", "c"], 10.0, FakeRandom())
    # 100 slots, 0 each, one more in the sampled slots 97, 98, 99.
    assert [(batch.at, batch.clients) for batch in plan.batches] == [
        (pytest.approx(9.7), ("c",)),
        (pytest.approx(9.8), ("b",)),
        (pytest.approx(9.9), ("a",)),
    ]


def test_zero_seconds_closes_everyone_in_one_batch_at_once() -> None:
    plan = plan_drain(list(range(5)), 0.0, FakeRandom())
    assert [(batch.at, batch.clients) for batch in plan.batches] == [(0.0, (4, 3, 2, 1, 0))]


def test_a_span_shorter_than_one_interval_is_one_batch() -> None:
    plan = plan_drain(list(range(5)), 0.05, FakeRandom())
    assert len(plan.batches) == 1 and plan.batches[0].at == 0.0


@pytest.mark.parametrize(
    ("clients", "seconds", "seed"),
    [(1, 10.0, 1), (7, 10.0, 2), (200, 10.0, 3), (10_000, 10.0, 4), (1234, 0.7, 5), (3, 600, 6)],
)
def test_every_client_once_flat_within_the_span(clients: int, seconds: float, seed: int) -> None:
    plan = plan_drain(list(range(clients)), seconds, random.Random(seed))
    closed = [client for batch in plan.batches for client in batch.clients]
    assert sorted(closed) == list(range(clients))  # each exactly once
    times = [batch.at for batch in plan.batches]
    assert times == sorted(set(times))  # in time order, one batch per slot at most
    assert all(0.0 <= at < max(seconds, 1e-9) for at in times)
    slots = max(1, int(seconds * BATCHES_PER_SECOND))
    sizes = Counter(len(batch.clients) for batch in plan.batches)
    base = clients // slots
    assert set(sizes) <= {base, base + 1} - {0}  # flat: sizes differ by one at most
    assert len(plan.batches) == min(clients, slots)


def test_the_order_is_random() -> None:
    first = plan_drain(list(range(100)), 1.0, random.Random(1))
    second = plan_drain(list(range(100)), 1.0, random.Random(2))
    assert first.batches[0].clients != second.batches[0].clients
    # Not the connection order: the first batch is not simply the first ten clients.
    assert first.batches[0].clients != tuple(range(10))


def test_few_clients_spread_over_the_whole_span() -> None:
    # 20 clients over 10 s: with the slots drawn at random they are not all in the first 2 s.
    plan = plan_drain(list(range(20)), 10.0, random.Random(7))
    assert plan.batches[-1].at > 5.0
