"""The drain plan: when each client of a node that is going away gets closed.

A draining node closes its clients with 1012 (service restart) and each reconnects, through
the load balancer, to another node, resuming with ``since``. Closed all at once they would
arrive there all at once: a wall of handshakes that the other node's
``handshakes_per_second`` answers with 429s, and a burst of history reads for the broker.
Spread over ``drain_seconds`` in small batches, :data:`BATCHES_PER_SECOND` of them, the
reconnect wave is flat: about N / (10 * drain_seconds) clients every 100 ms.

Which client goes in which batch is random (a shuffle), so that no group of clients (the
oldest connections, one channel) is always the first to move; how many go in each batch is
even (sizes differ by at most one), which is flatter than letting every client draw its slot
independently (that leaves some slots with twice the average by chance).

Pure: it takes the clients, the seconds and a random source and returns the plan; the
gateway (``gateway.py``) sleeps until each batch's time and closes its clients.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Batches per second of drain: one every 100 ms is flat for a load balancer and a client's
#: backoff, and still one loop turn per batch for the draining node.
BATCHES_PER_SECOND = 10


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """Clients to close together, ``at`` seconds after the drain started."""

    at: float
    clients: tuple[T, ...]


@dataclass(frozen=True, slots=True)
class DrainPlan(Generic[T]):
    """Every client of the node, each in exactly one batch, batches in time order."""

    #: the span the batches are spread over (0 when there is nobody to close)
    seconds: float
    batches: tuple[Batch[T], ...]

    @property
    def clients(self) -> int:
        return sum(len(batch.clients) for batch in self.batches)


def plan_drain(clients: Sequence[T], seconds: float, rng: random.Random) -> DrainPlan[T]:
    """Spread ``clients`` over ``seconds`` in batches :data:`BATCHES_PER_SECOND` apart.

    The first batch goes at 0 and the last at ``seconds`` minus one interval, so the drain
    is over within ``seconds``; 0 seconds closes everyone in one batch. A slot left empty
    (fewer clients than slots) gets no batch.
    """
    if not clients:
        return DrainPlan(0.0, ())
    slots = max(1, int(seconds * BATCHES_PER_SECOND))
    order = list(clients)
    rng.shuffle(order)
    base, extra = divmod(len(order), slots)
    # The slots that take one more client are random too: with fewer clients than slots,
    # the clients are scattered over the whole span instead of packed at its start.
    larger = set(rng.sample(range(slots), extra))
    batches: list[Batch[T]] = []
    taken = 0
    for slot in range(slots):
        size = base + (slot in larger)
        if size:
            batches.append(Batch(slot * seconds / slots, tuple(order[taken : taken + size])))
            taken += size
    return DrainPlan(seconds, tuple(batches))
