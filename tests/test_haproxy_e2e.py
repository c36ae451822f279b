"""Two gateway nodes behind a real HAProxy running deploy/haproxy.cfg, on one real Redis.

Everything runs on 127.0.0.1 and is started by the test: redis-server (the ``redis_server``
fixture), two ``wsgateway serve`` processes and ``/usr/sbin/haproxy``; each is killed when
the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .processes import GatewayNode, HAProxy, http_json

# No skip when haproxy or redis-server is missing: scripts/test installs both, and a
# missing one must fail the run, not hide the cluster tests.
pytestmark = pytest.mark.e2e

TOKEN = "haproxy-test-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 200
TOPIC = "BTC-USD"


def node_env(**extra: str) -> dict[str, str]:
    return {
        "WSGATEWAY_PUBLISH_TOKEN": TOKEN,
        # HAProxy is on this host: its X-Forwarded-For names the client (README, HAProxy).
        "WSGATEWAY_TRUSTED_PROXIES": "127.0.0.1",
        "WSGATEWAY_LOG_LEVEL": "WARNING",
        **extra,
    }


@contextlib.contextmanager
def cluster(
    tmp_path: Path, broker: str, **env: str
) -> Iterator[tuple[GatewayNode, GatewayNode, HAProxy]]:
    with contextlib.ExitStack() as stack:
        args = ("--broker", broker)
        a = stack.enter_context(GatewayNode(*args, env=node_env(**env)))
        b = stack.enter_context(GatewayNode(*args, env=node_env(**env)))
        lb = stack.enter_context(HAProxy((a.address, b.address), tmp_path))
        try:
            yield a, b, lb
        except BaseException:
            print("haproxy:\n" + lb.log())
            print("node a:\n" + a.output())
            print("node b:\n" + b.output())
            raise


def active(node: GatewayNode) -> int:
    status, view = http_json("GET", node.http + "/api/ws/metrics")
    assert status == 200
    return int(view["total_active_connections"])


@contextlib.asynccontextmanager
async def connected(
    url: str, count: int, headers: list[dict[str, str]] | None = None
) -> AsyncIterator[list[websockets.ClientConnection]]:
    clients = await asyncio.gather(
        *(
            websockets.connect(url, additional_headers=headers[i] if headers else None)
            for i in range(count)
        )
    )
    try:
        yield list(clients)
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_haproxy_spreads_clients_over_both_nodes_and_forwards_their_address(
    tmp_path: Path,
) -> None:
    """leastconn gives each node a fair share; the nodes see each client's own address.

    One connection per address (max_connections_per_ip = 1), each client naming its own
    address in X-Forwarded-For: all 200 are admitted only if the nodes read the address
    HAProxy forwards (trusted_proxies), and more from one address are refused.
    The memory broker suffices: nothing is published here.
    """
    with cluster(tmp_path, "memory://", WSGATEWAY_MAX_CONNECTIONS_PER_IP="1") as (a, b, lb):
        addresses = [{"X-Forwarded-For": f"10.0.{i // 250}.{i % 250 + 1}"} for i in range(CLIENTS)]
        async with connected(f"{lb.ws}/ws/ticker", CLIENTS, addresses) as clients:
            for ws in clients:
                reply = json.loads(await request_reply(ws, {"type": "ping", "id": 1}))
                assert reply["type"] == "pong"
            on_a, on_b = await asyncio.to_thread(active, a), await asyncio.to_thread(active, b)
            assert on_a + on_b == CLIENTS
            assert min(on_a, on_b) >= CLIENTS * 0.3, (on_a, on_b)
            # The limit is per node, and the address is on one of the two: of three more
            # connections from it, the other node admits one at most.
            statuses, extra = [], []
            for _ in range(3):
                try:
                    url = f"{lb.ws}/ws/ticker"
                    extra.append(await websockets.connect(url, additional_headers=addresses[0]))
                except InvalidStatus as refused:
                    statuses.append(refused.response.status_code)
            for ws in extra:
                await ws.close()
            assert len(extra) <= 1 and statuses.count(429) >= 2, statuses


async def request_reply(ws: websockets.ClientConnection, message: Any) -> str:
    await ws.send(json.dumps(message))
    reply = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(reply, str)
    return reply


async def test_a_publish_to_either_node_reaches_every_client_in_order(
    tmp_path: Path, redis_server: Any
) -> None:
    with cluster(tmp_path, redis_server.url, **many_clients()) as (a, b, lb):
        async with connected(f"{lb.ws}/ws/ticker", CLIENTS) as clients:
            for ws in clients:
                reply = json.loads(await request_reply(ws, subscribe()))
                assert reply["type"] == "subscribed"
            on_a, on_b = await asyncio.to_thread(active, a), await asyncio.to_thread(active, b)
            assert min(on_a, on_b) >= CLIENTS * 0.3, (on_a, on_b)
            messages = 20
            for n in range(messages):  # alternately to each node, directly
                node = (a, b)[n % 2]
                body = {"channel": "ticker", "topic": TOPIC, "data": {"n": n}}
                status, answer = await asyncio.to_thread(
                    http_json, "POST", node.http + "/api/publish", body, AUTH
                )
                assert (status, answer) == (200, {"accepted": 1})

            async def updates(ws: websockets.ClientConnection) -> list[tuple[int, int]]:
                got = []
                while len(got) < messages:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    if frame["type"] == "update":
                        got.append((frame["seq"], frame["data"]["n"]))
                return got

            expected = [(n + 1, n) for n in range(messages)]
            for got in await asyncio.gather(*(updates(ws) for ws in clients)):
                assert got == expected  # every one, in order, no duplicate
            # And nothing more (a duplicate would come after the last).
            await asyncio.sleep(0.3)
            for ws in clients:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.01)


# -- drain under load -------------------------------------------------------------------------


def many_clients(**extra: str) -> dict[str, str]:
    """Limits for 200 clients that all come from 127.0.0.1."""
    return {
        "WSGATEWAY_CONNECTIONS_PER_MINUTE": "100000",
        "WSGATEWAY_MAX_CONNECTIONS_PER_IP": "100000",
        **extra,
    }


def subscribe(since: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "subscribe", "topics": [TOPIC], "id": 1}
    if since is not None:
        message["since"] = since
    return message


class ResumingClient:
    """What a client should do (README, "Drain"): on 1012 (or any loss of the connection),
    reconnect through the load balancer with exponential backoff and jitter, and subscribe
    with ``since`` = the last seq and epoch it saw."""

    def __init__(self, url: str, rng: random.Random) -> None:
        self.url = url
        self.rng = rng
        self.seqs: list[int] = []
        self.epoch: str | None = None
        self.close_codes: list[int | None] = []
        self.refused: list[int] = []
        self.recovered: list[bool] = []
        self.resets = 0
        self.subscribed = asyncio.Event()

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                async with websockets.connect(self.url, open_timeout=10) as ws:
                    since = None
                    if self.epoch is not None:
                        since = {TOPIC: {"seq": self.last, "epoch": self.epoch}}
                    await ws.send(json.dumps(subscribe(since)))
                    async for raw in ws:
                        self.handle(json.loads(raw), resumed=since is not None)
                        backoff = 0.05
                    self.close_codes.append(ws.close_code)
            except InvalidStatus as refused:
                self.refused.append(refused.response.status_code)
            except ConnectionClosed as closed:  # 1012 among others: not a "normal" close
                self.close_codes.append(closed.rcvd.code if closed.rcvd is not None else None)
            except (OSError, TimeoutError):
                self.close_codes.append(None)
            # Full jitter: a reconnect wave stays as flat as the drain made it.
            await asyncio.sleep(self.rng.uniform(0, backoff))
            backoff = min(backoff * 2, 2.0)

    def handle(self, frame: dict[str, Any], *, resumed: bool) -> None:
        kind = frame["type"]
        if kind == "subscribed":
            position = frame["positions"][TOPIC]
            if resumed:
                self.recovered.append(position["recovered"])
            elif position.get("epoch") is not None:
                self.epoch = position["epoch"]
            self.subscribed.set()
        elif kind == "update":
            if frame["seq"] == 1 or self.epoch is None:
                self.epoch = frame.get("epoch", self.epoch)
            self.seqs.append(frame["seq"])
        elif kind == "reset":
            self.resets += 1
            self.epoch = frame["epoch"]
        else:
            raise AssertionError(f"unexpected frame {frame}")


async def clients_reach(
    condition: Callable[[], bool], tasks: list[asyncio.Task[None]], timeout: float
) -> None:
    """Wait for ``condition``; a client task that failed (a frame the protocol does not
    allow) fails the test at once with its own error."""
    deadline = time.monotonic() + timeout
    while not condition():
        for task in tasks:
            if task.done():
                task.result()  # raises what ended it
                raise AssertionError("a client stopped")
        assert time.monotonic() < deadline, "the clients did not get there in time"
        await asyncio.sleep(0.05)


async def publish_steadily(url: str, stop: asyncio.Event, per_second: float = 50.0) -> list[float]:
    """Publish one update every 1/per_second s through HAProxy until ``stop``; when each
    accepted one was accepted (time.monotonic)."""
    accepted: list[float] = []
    n = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            body = {"channel": "ticker", "topic": TOPIC, "data": {"n": n}}
            try:
                async with session.post(url + "/api/publish", json=body, headers=AUTH) as r:
                    if r.status == 200:
                        accepted.append(time.monotonic())
                        n += 1
            except aiohttp.ClientError:
                pass  # no node reachable for a moment: the same n is sent again
            await asyncio.sleep(1 / per_second)
    return accepted


async def drain_under_load(tmp_path: Path, redis_url: str, how: str) -> None:
    drain_seconds = 3.0
    env = many_clients(
        WSGATEWAY_DRAIN_SECONDS=str(drain_seconds),
        WSGATEWAY_HISTORY_SIZE="2000",
        WSGATEWAY_CLOSE_TIMEOUT="2",
    )
    with cluster(tmp_path, redis_url, **env) as (a, b, lb):
        rng = random.Random(8)
        clients = [ResumingClient(f"{lb.ws}/ws/ticker", rng) for _ in range(CLIENTS)]
        tasks = [asyncio.create_task(client.run()) for client in clients]
        stop_publishing = asyncio.Event()
        publisher: asyncio.Task[list[int]] | None = None
        try:
            await clients_reach(lambda: all(c.subscribed.is_set() for c in clients), tasks, 30)
            on_a = await asyncio.to_thread(active, a)
            assert min(on_a, CLIENTS - on_a) >= CLIENTS * 0.3, on_a
            publisher = asyncio.create_task(
                publish_steadily(f"http://127.0.0.1:{lb.port}", stop_publishing)
            )
            await asyncio.sleep(1.0)

            started = time.monotonic()
            if how == "api":
                status, body = await asyncio.to_thread(
                    http_json, "POST", a.http + "/api/drain", None, AUTH
                )
                assert status == 202 and body["clients"] == on_a, body
            else:
                a.signal(signal.SIGTERM)
            assert await asyncio.to_thread(a.wait, 30) == 0
            drained_in = time.monotonic() - started
            assert drained_in >= drain_seconds * 0.9  # spread, not all at once

            await asyncio.sleep(1.0)
            stop_publishing.set()
            accepted = await publisher
            total = len(accepted)
            # The feed ran all through the drain (a loaded machine publishes fewer).
            during = [t for t in accepted if started <= t <= started + drained_in]
            assert len(during) >= 10, (len(during), total)
            await clients_reach(lambda: all(c.last >= total for c in clients), tasks, 20)
            assert await asyncio.to_thread(active, b) == CLIENTS
        finally:
            stop_publishing.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if publisher is not None:
                await asyncio.gather(publisher, return_exceptions=True)

        moved = [client for client in clients if 1012 in client.close_codes]
        assert len(moved) == on_a  # every client of the drained node got 1012
        for client in clients:
            assert client.seqs == list(range(1, total + 1))  # every seq exactly once
            assert client.resets == 0
            assert all(client.recovered)
        for client in moved:
            assert client.recovered, "a moved client resumed with since"
        assert "drained: " in a.output()


async def test_post_drain_moves_every_client_to_the_other_node_missing_nothing(
    tmp_path: Path, redis_server: Any
) -> None:
    await drain_under_load(tmp_path, redis_server.url, "api")


async def test_sigterm_moves_every_client_to_the_other_node_missing_nothing(
    tmp_path: Path, redis_server: Any
) -> None:
    await drain_under_load(tmp_path, redis_server.url, "sigterm")
