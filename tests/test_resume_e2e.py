"""Resume end to end, on both brokers: clients dropped and reconnected in the middle of a
fast feed subscribe again with ``since`` and end with every seq exactly once, in order.

The clients are python-websockets connections that behave as the protocol reference asks a
client to: remember the last seq of each topic and its epoch (from the ``subscribed``
reply's ``positions`` or the ``epoch`` of an update with seq 1), and after a disconnect
subscribe with ``since``.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import websockets

from wsgateway import Settings

from .conftest import RunningGateway, StartGateway, recv_json, request

TOPICS = ("BTC-USD", "ETH-USD", "SOL-USD")
MESSAGES_PER_TOPIC = 600
CLIENTS = 12


@pytest.fixture(params=["memory", "redis"])
async def feed_gateway(request: pytest.FixtureRequest, start_gateway: StartGateway) -> Any:
    settings = Settings()
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        settings = replace(settings, broker=redis.url)
    limits = replace(settings.defaults, history_size=2000, connections_per_minute=100_000)
    return await start_gateway(replace(settings, defaults=limits))


@dataclass
class ResumingClient:
    """A client that drops its connection now and then and resumes where it was."""

    gw: RunningGateway
    seqs: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TOPICS})
    epochs: dict[str, str] = field(default_factory=lambda: dict.fromkeys(TOPICS, ""))
    reconnects: int = 0
    not_recovered: list[dict[str, Any]] = field(default_factory=list)

    def since(self) -> dict[str, dict[str, Any]]:
        return {
            t: {"seq": self.seqs[t][-1] if self.seqs[t] else 0, "epoch": self.epochs[t]}
            for t in TOPICS
        }

    async def session(self, stop: asyncio.Event, resume: bool, rng: random.Random) -> None:
        """Subscribe (with since when resuming), then read until told to stop or until a
        random moment, when the connection is dropped without a close handshake."""
        ws = await websockets.connect(self.gw.ws_url("ticker"), max_queue=None)
        try:
            message: dict[str, Any] = {"type": "subscribe", "topics": list(TOPICS), "id": 1}
            if resume:
                message["since"] = self.since()
            await ws.send(json.dumps(message))
            drop_after = rng.randint(50, 400)
            received = 0
            while True:
                frame = await recv_json(ws, timeout=10)
                if frame["type"] == "subscribed":
                    self.read_positions(frame, resume)
                    continue
                assert frame["type"] == "update", frame
                topic = frame["topic"]
                if frame["seq"] == 1:
                    self.epochs[topic] = frame["epoch"]
                self.seqs[topic].append(frame["seq"])
                received += 1
                if received >= drop_after and not self.done():
                    ws.transport.abort()  # gone without a close: what a lost network does
                    self.reconnects += 1
                    return
                if stop.is_set() and self.done():
                    return
        finally:
            if ws.state is not websockets.State.CLOSED:
                await ws.close()

    def read_positions(self, reply: dict[str, Any], resume: bool) -> None:
        for topic, position in reply["positions"].items():
            if position["epoch"]:
                self.epochs[topic] = position["epoch"]
            if resume and not position["recovered"]:
                self.not_recovered.append(position)
            if not resume:
                assert "recovered" not in position

    def done(self) -> bool:
        return all(len(self.seqs[t]) >= MESSAGES_PER_TOPIC for t in TOPICS)


async def publish_feed(gw: RunningGateway) -> None:
    """Batches of 30 (10 per topic), as fast as the gateway takes them."""
    for start in range(0, MESSAGES_PER_TOPIC, 10):
        batch = [
            {"channel": "ticker", "topic": topic, "data": {"n": n}}
            for n in range(start, start + 10)
            for topic in TOPICS
        ]
        await gw.gateway.publish_many(batch)
        await asyncio.sleep(0.005)


async def run_client(client: ResumingClient, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    resume = False
    while not (stop.is_set() and client.done()):
        await client.session(stop, resume, rng)
        resume = True
        await asyncio.sleep(rng.uniform(0, 0.05))


@pytest.mark.e2e
async def test_clients_dropped_mid_feed_resume_with_every_seq_exactly_once(
    feed_gateway: RunningGateway,
) -> None:
    gw = feed_gateway
    clients = [ResumingClient(gw) for _ in range(CLIENTS)]
    stop = asyncio.Event()
    # Everyone subscribed before the feed starts: each must end with seq 1..N of each topic.
    async with websockets.connect(gw.ws_url("ticker")) as probe:
        await request(probe, {"type": "subscribe", "topics": list(TOPICS)})
    tasks = [asyncio.create_task(run_client(c, stop, seed)) for seed, c in enumerate(clients)]
    await asyncio.sleep(0.3)
    await publish_feed(gw)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    expected = list(range(1, MESSAGES_PER_TOPIC + 1))
    for client in clients:
        assert client.not_recovered == []
        for topic in TOPICS:
            assert client.seqs[topic] == expected, (topic, client.reconnects)
    assert sum(c.reconnects for c in clients) >= CLIENTS  # the drops really happened
    resumed = gw.gateway.registry.get_sample_value(
        "wsgateway_resumes_total", {"channel": "ticker", "outcome": "recovered"}
    )
    assert resumed is not None and resumed >= sum(c.reconnects for c in clients) * len(TOPICS)


@pytest.mark.e2e
async def test_a_client_behind_more_than_the_history_is_told_and_gets_no_replay(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(history_size=5)
    async with websockets.connect(gw.ws_url("trades")) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
        assert reply["positions"] == {"BTC-USD": {"seq": 0, "epoch": ""}}
        await gw.publish("trades", "BTC-USD", {"n": 1})
        first = await recv_json(ws)
        epoch = first["epoch"]
    for n in range(2, 12):
        await gw.publish("trades", "BTC-USD", {"n": n})
    async with websockets.connect(gw.ws_url("trades")) as ws:
        since = {"BTC-USD": {"seq": 1, "epoch": epoch}}
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "since": since})
        assert reply["positions"] == {"BTC-USD": {"seq": 11, "epoch": epoch, "recovered": False}}
        await gw.publish("trades", "BTC-USD", {"n": 12})
        assert (await recv_json(ws))["seq"] == 12  # nothing replayed: live from seq 11 on
        # Within the history (its last 5): 8..12 come back, each once.
        since = {"BTC-USD": {"seq": 7, "epoch": epoch}}
    async with websockets.connect(gw.ws_url("trades")) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "since": since})
        assert reply["positions"]["BTC-USD"] == {"seq": 12, "epoch": epoch, "recovered": True}
        assert [(await recv_json(ws))["seq"] for _ in range(5)] == [8, 9, 10, 11, 12]
        # Another epoch is not this topic's past: not recovered.
        since = {"BTC-USD": {"seq": 6, "epoch": "someone-else"}}
        reply = await request(
            ws, {"type": "subscribe", "topics": ["ETH-USD", "BTC-USD"], "since": since}
        )
        assert reply["positions"]["BTC-USD"] == {"seq": 12, "epoch": epoch}  # already held


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("since", "why"),
    [
        pytest.param({"ETH-USD": {"seq": 1, "epoch": "e"}}, "not in topics", id="other-topic"),
        pytest.param({"BTC-USD": {"seq": -1, "epoch": "e"}}, "negative", id="negative-seq"),
        pytest.param({"BTC-USD": {"seq": 2**53, "epoch": "e"}}, "too big", id="seq-past-2^53"),
        pytest.param({"BTC-USD": {"seq": 1}}, "no epoch", id="no-epoch"),
        pytest.param({"BTC-USD": {"seq": True, "epoch": "e"}}, "bool", id="bool-seq"),
        pytest.param({"BTC-USD": {"seq": 1, "epoch": "e" * 65}}, "long", id="long-epoch"),
        pytest.param({"BTC-USD": [1, "e"]}, "array", id="array-position"),
        pytest.param(["BTC-USD"], "array", id="array-since"),
        pytest.param({"*": {"seq": 1, "epoch": "e"}}, "wildcard", id="wildcard"),
    ],
)
async def test_a_bad_since_gets_bad_message_and_changes_nothing(
    gw: RunningGateway, since: Any, why: str
) -> None:
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        frame = {"type": "subscribe", "topics": ["BTC-USD"], "since": since, "id": 3}
        reply = await request(ws, frame)
        assert reply["type"] == "error" and reply["code"] == "bad_message", why
        assert reply["id"] == 3 and '"since"' in reply["message"]
        # Nothing was subscribed: the first update this client sees is the one it asks for.
        await gw.publish("ticker", "BTC-USD", {"n": 1})
        reply = await request(ws, {"type": "subscribe", "topics": ["ETH-USD"]})
        assert reply["type"] == "subscribed"
        await gw.publish("ticker", "ETH-USD", {"n": 1})
        assert (await recv_json(ws))["topic"] == "ETH-USD"


@pytest.mark.e2e
@pytest.mark.attack
async def test_subscribe_unsubscribe_loops_cannot_turn_into_broker_reads(
    start_gateway: StartGateway,
) -> None:
    """Each topic the gateway does not relay costs a broker read (Redis, on a cluster): a
    connection gets 2 x max_topics of them at once and max_topics / 10 a second after, and a
    subscribe past that is refused whole with rate_limited and a retry_after. A reconnecting
    client resuming all its topics fits; a bystander is not affected."""
    gw = await start_gateway(max_topics=10, messages_per_second=1000)
    topics = [f"T{n}" for n in range(10)]
    async with (
        websockets.connect(gw.ws_url("trades")) as looper,
        websockets.connect(gw.ws_url("trades")) as bystander,
    ):
        for attempt in range(2):  # the burst: 2 x 10 topics
            reply = await request(looper, {"type": "subscribe", "topics": topics, "id": attempt})
            assert reply["type"] == "subscribed"
            await request(looper, {"type": "unsubscribe", "topics": topics})
        reply = await request(looper, {"type": "subscribe", "topics": topics, "id": 9})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "rate_limited", 9)
        assert 0 < reply["retry_after"] <= 10
        assert "nothing was subscribed" in reply["message"]
        # Nothing was subscribed: a publish on T0 does not reach the looper.
        await gw.publish("trades", "T0", {"n": 1})
        pong = await request(looper, {"type": "ping", "id": "p"})
        assert pong["type"] == "pong"
        # The bystander's own budget is untouched.
        reply = await request(bystander, {"type": "subscribe", "topics": topics})
        assert reply["type"] == "subscribed"
        # Topics the gateway relays need no broker read: they are not counted.
        reply = await request(looper, {"type": "subscribe", "topics": ["T0"]})
        assert reply["type"] == "subscribed" and reply["positions"]["T0"]["seq"] == 1
