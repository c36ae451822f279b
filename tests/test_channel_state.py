"""Channel.state() keeps its figures without walking every connection: they must stay equal
to a full recount whatever the clients do (subscribe, unsubscribe, "*", close)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgateway.brokers.base import Update
from wsgateway.errors import ClientError

from .fakes import EPOCH, FakeTransport, Harness, make_channel, open_connection, subscribe

TOPICS = ["A", "B", "C", "*"]


def recount(harness: Harness) -> tuple[int, int]:
    """Subscriptions and queued bytes, counted the slow way over every connection."""
    connections = harness.channel.connections
    return (
        sum(len(c.topics) for c in connections),
        sum(c.pending_bytes() for c in connections),
    )


def figures(harness: Harness) -> tuple[int, int]:
    state = harness.channel.state()
    return state.subscriptions, state.outbox_bytes


operation = st.one_of(
    st.tuples(st.just("open"), st.integers(0, 3)),
    st.tuples(st.just("subscribe"), st.integers(0, 7), st.lists(st.sampled_from(TOPICS))),
    st.tuples(st.just("unsubscribe"), st.integers(0, 7), st.lists(st.sampled_from(TOPICS))),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("close"), st.integers(0, 7)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_subscription_count_equals_a_recount(operations: list[tuple[Any, ...]]) -> None:
    harness = make_channel(max_topics=3)
    clients = [open_connection(harness) for _ in range(2)]
    for op in operations:
        if op[0] == "open":
            clients.append(open_connection(harness, f"10.0.0.{op[1]}"))
            continue
        conn = clients[op[1] % len(clients)].conn
        if op[0] == "subscribe":
            # too many topics: refused whole, nothing changes
            with contextlib.suppress(ClientError):
                subscribe(harness.channel, conn, op[2])
        elif op[0] == "unsubscribe":
            harness.channel.unsubscribe(conn, op[2])
        elif op[0] == "remove":
            harness.channel.remove(conn, "client_closed")
        else:
            harness.channel.close(conn, 1000, "bye", "client_closed")
        assert figures(harness)[0] == recount(harness)[0]
    for client in clients:
        harness.channel.remove(client.conn, "client_closed")
    assert figures(harness) == (0, 0)


def test_wildcard_then_topic_sequence_keeps_the_count() -> None:
    harness = make_channel()
    conn = open_connection(harness).conn
    subscribe(harness.channel, conn, ["*"])
    harness.channel.unsubscribe(conn, ["*", "*"])  # named twice: dropped once
    subscribe(harness.channel, conn, ["A", "A", "B"])
    assert figures(harness)[0] == recount(harness)[0] == 2
    harness.channel.unsubscribe(conn, ["A", "Z"])
    assert figures(harness)[0] == 1


@pytest.mark.parametrize("buffered", [0, 100, 200_000])
async def test_outbox_bytes_equal_a_recount_before_and_after_the_flush(buffered: int) -> None:
    harness = make_channel()
    transports = [FakeTransport() for _ in range(3)]
    clients = [open_connection(harness, transport=t) for t in transports]
    for client in clients:
        subscribe(harness.channel, client.conn, ["A"])
    update = Update(channel="ticker", topic="A", seq=1, ts=EPOCH, data={"p": 1})
    harness.channel.broadcast(update)
    assert figures(harness) == recount(harness)
    assert figures(harness)[1] > 0
    transports[1].buffer_size = buffered  # the kernel did not take this client's bytes
    harness.channel.flush()
    assert figures(harness) == recount(harness)
    transports[1].buffer_size = 0  # it has since: the figure follows without a new write
    assert figures(harness) == recount(harness) == (3, 0)
