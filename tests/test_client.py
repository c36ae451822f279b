"""The SDK against a scripted server: an aiohttp test server whose WebSocket handler plays
one script per connection, so that a hole, a refusal or a close arrives exactly when the
test wants it. The real gateway is in tests/test_client_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from wsgateway.book import checksum
from wsgateway.client import (
    Client,
    ClosedByGateway,
    ConnectRefused,
    Gap,
    Snapshot,
    SubscribeRefused,
    TokenExpired,
    Update,
)

Script = Callable[[web.WebSocketResponse], Awaitable[None]]
FAST = (0.01, 0.05)


class ScriptedServer:
    """Answers the n-th upgrade with the n-th entry: a script, or an HTTP response."""

    def __init__(self, entries: list[Script | web.Response]) -> None:
        self.entries = entries
        self.attempts = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry = self.entries[min(self.attempts, len(self.entries) - 1)]
        self.attempts += 1
        if isinstance(entry, web.Response):
            return entry
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await entry(ws)
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/ws/{channel}", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    servers: list[ScriptedServer] = []

    async def start(*entries: Script | web.Response) -> str:
        server = ScriptedServer(list(entries))
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        assert server.server is not None
        await server.server.close()


async def receive(ws: web.WebSocketResponse) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await ws.receive_str(timeout=5))
    return frame


async def send(ws: web.WebSocketResponse, **frame: Any) -> None:
    await ws.send_str(orjson.dumps(frame).decode())


async def update(ws: web.WebSocketResponse, seq: int, **extra: Any) -> None:
    await send(ws, type="update", channel="ticker", topic="A", seq=seq, ts=1.0, data=seq, **extra)


async def subscribed(
    ws: web.WebSocketResponse, request: dict[str, Any], seq: int, epoch: str, **extra: Any
) -> None:
    """Answer ``request`` (a subscribe to topic A) with A's position."""
    positions = {"A": {"seq": seq, "epoch": epoch, **extra}}
    await send(ws, type="subscribed", topics=["A"], positions=positions, id=request["id"])


async def hold(ws: web.WebSocketResponse) -> None:
    """Keep the connection until the client closes it."""
    async for _ in ws:
        pass


async def take(client: Client, count: int) -> list[Any]:
    events = []
    async for event in client:
        events.append(event)
        if len(events) == count:
            break
    return events


async def client_tasks_left() -> list[asyncio.Task[Any]]:
    """Tasks still running besides this test and the scripted server's handlers (a closed
    client must leave none: no heartbeat, no reader, no connector cleanup)."""
    for _ in range(3):
        await asyncio.sleep(0)  # let what the close cancelled finish
    current = asyncio.current_task()
    return [
        task
        for task in asyncio.all_tasks()
        if task is not current
        and not task.done()
        and "RequestHandler" not in task.get_coro().__qualname__  # type: ignore[union-attr]
    ]


async def test_a_hole_in_one_connection_is_repaired_by_a_resubscribe_with_since(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    seen: list[dict[str, Any]] = []

    async def script(ws: web.WebSocketResponse) -> None:
        seen.append(await receive(ws))
        await subscribed(ws, seen[0], 0, "")
        await update(ws, 1, epoch="E")
        await update(ws, 2)
        await update(ws, 4)  # 3 lost on the way
        seen.append(await receive(ws))
        await send(ws, type="unsubscribed", topics=["A"], id=seen[1]["id"])
        seen.append(await receive(ws))
        await subscribed(ws, seen[2], 4, "E", recovered=True)
        for seq in (3, 4, 5):
            await update(ws, seq)
        await hold(ws)

    url = await scripted(script)
    async with Client(url, "ticker", ["A"], backoff=FAST) as client:
        events = await take(client, 5)
        assert client.position("A") == ("E", 5)
        assert client.last("A") == 5
        assert client.connections == 1
    assert [(e.seq, e.replayed) for e in events] == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
        (5, False),
    ]
    assert seen[0] == {"type": "subscribe", "topics": ["A"], "id": 1}
    assert seen[1]["type"] == "unsubscribe" and seen[1]["topics"] == ["A"]
    assert seen[2]["type"] == "subscribe"
    assert seen[2]["since"] == {"A": {"seq": 2, "epoch": "E"}}
    assert await client_tasks_left() == []


async def test_a_drain_close_reconnects_and_resumes_and_not_recovered_is_a_gap(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    subscribes: list[dict[str, Any]] = []

    async def first(ws: web.WebSocketResponse) -> None:
        subscribes.append(request := await receive(ws))
        await subscribed(ws, request, 10, "E")
        await update(ws, 11)
        await ws.close(code=1012, message=b"draining")

    async def second(ws: web.WebSocketResponse) -> None:
        subscribes.append(request := await receive(ws))
        await subscribed(ws, request, 20, "E", recovered=False)
        await update(ws, 21)
        await hold(ws)

    url = await scripted(first, second)
    async with Client(url, "ticker", ["A"], backoff=FAST) as client:
        events = await take(client, 3)
    assert events[0] == Update("A", 11, "E", 1.0, 11)
    assert events[1] == Gap("A", 12, 20, "E", ("E", 11))
    assert events[2] == Update("A", 21, "E", 1.0, 21)
    assert subscribes[1]["since"] == {"A": {"seq": 11, "epoch": "E"}}


async def test_an_unknown_channel_raises_at_once(scripted: Callable[..., Awaitable[str]]) -> None:
    refusal = web.json_response(
        {"error": "unknown_channel", "message": "no such channel"}, status=404
    )
    url = await scripted(refusal)
    client = Client(url, "nope", ["A"], backoff=FAST)
    with pytest.raises(ConnectRefused, match="404 unknown_channel") as raised:
        await take(client, 1)
    assert raised.value.status == 404
    assert await client_tasks_left() == []


async def test_a_full_channel_is_retried_after_retry_after(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    async def served(ws: web.WebSocketResponse) -> None:
        request = await receive(ws)
        await subscribed(ws, request, 0, "")
        await update(ws, 1, epoch="E")
        await hold(ws)

    full = {"error": "capacity", "message": "full"}
    url = await scripted(
        web.json_response(full, status=503, headers={"Retry-After": "0"}),
        web.json_response(full, status=503),
        served,
    )
    async with Client(url, "ticker", ["A"], backoff=FAST) as client:
        assert [e.seq for e in await take(client, 1)] == [1]


async def test_a_rate_limited_subscribe_is_sent_again_and_a_bad_topic_raises(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        request = await receive(ws)
        await send(
            ws,
            type="error",
            code="rate_limited",
            message="slow down",
            retry_after=0.05,
            id=request["id"],
        )
        request = await receive(ws)
        await subscribed(ws, request, 3, "E")
        await update(ws, 4)
        await hold(ws)

    url = await scripted(script)
    async with Client(url, "ticker", ["A"], backoff=FAST) as client:
        assert [e.seq for e in await take(client, 1)] == [4]

    async def refuse(ws: web.WebSocketResponse) -> None:
        request = await receive(ws)
        await send(ws, type="error", code="invalid_topic", message="bad topic", id=request["id"])
        await hold(ws)

    url = await scripted(refuse)
    with pytest.raises(SubscribeRefused, match="invalid_topic"):
        await take(Client(url, "ticker", ["A"], backoff=FAST), 1)
    assert await client_tasks_left() == []


async def test_an_expired_token_raises(scripted: Callable[..., Awaitable[str]]) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await receive(ws)
        await ws.close(code=1008, message=b"token expired")

    server_url = await scripted(script)

    client = Client(server_url, "user", ["u1"], token="t0k", backoff=FAST)
    with pytest.raises(TokenExpired):
        await take(client, 1)


async def test_close_ends_the_iteration_while_it_waits(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    subscribed = asyncio.Event()

    async def quiet(ws: web.WebSocketResponse) -> None:
        request = await receive(ws)
        subscribed.set()
        await subscribed(ws, request, 0, "")
        await hold(ws)

    url = await scripted(quiet)
    client = Client(url, "ticker", ["A"], backoff=FAST)
    reader = asyncio.create_task(take(client, 1))
    await asyncio.wait_for(subscribed.wait(), 5)
    await client.close()
    assert await asyncio.wait_for(reader, 5) == []
    assert await client_tasks_left() == []


def levels(*pairs: tuple[str, str]) -> list[list[str]]:
    return [list(pair) for pair in pairs]


async def book(
    ws: web.WebSocketResponse, kind: str, seq: int, data: dict[str, Any], **extra: Any
) -> None:
    await send(ws, type=kind, channel="orderbook", topic="A", seq=seq, ts=2.0, data=data, **extra)


async def test_a_book_from_a_snapshot_and_deltas_and_a_checksum_mismatch_takes_a_fresh_one(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    seen: list[dict[str, Any]] = []
    good = [("100", "1")], [("101", "2")]
    moved = [("100", "1")], [("101", "2"), ("102", "5")]

    async def script(ws: web.WebSocketResponse) -> None:
        seen.append(request := await receive(ws))
        await subscribed(ws, request, 3, "E")
        await book(
            ws,
            "snapshot",
            3,
            {"bids": levels(*good[0]), "asks": levels(*good[1]), "checksum": checksum(*good)},
            epoch="E",
        )
        await book(
            ws, "update", 4, {"bids": [], "asks": [["102", "5"]], "checksum": checksum(*moved)}
        )
        # a conflated frame (from_seq) whose checksum says the client's book went wrong
        await book(ws, "update", 6, {"bids": [["100", "7"]], "asks": [], "checksum": 1}, from_seq=5)
        await book(ws, "update", 7, {"bids": [["99", "1"]], "asks": []})  # still in flight: dropped
        seen.append(await receive(ws))
        await send(ws, type="unsubscribed", topics=["A"], id=seen[-1]["id"])
        seen.append(request := await receive(ws))
        await subscribed(ws, request, 8, "E")
        fresh = [("100", "7"), ("99", "1")], [("101", "2")]
        data = {"bids": levels(*fresh[0]), "asks": levels(*fresh[1]), "checksum": checksum(*fresh)}
        await book(ws, "snapshot", 8, data, epoch="E")
        await hold(ws)

    url = await scripted(script)
    async with Client(url, "orderbook", ["A"], backoff=FAST) as client:
        events = await take(client, 4)
        held = client.book("A")
        assert held is not None
        assert (held.bids.levels(), held.asks.levels()) == (
            [("100", "7"), ("99", "1")],
            [("101", "2")],
        )
        assert client.position("A") == ("E", 8)
    assert [type(e) for e in events] == [Snapshot, Update, Gap, Snapshot]
    assert events[2] == Gap("A", 6, 6, "E", ("E", 4), reason="checksum")
    assert seen[1]["type"] == "unsubscribe"
    assert seen[2] == {"type": "subscribe", "topics": ["A"], "id": seen[2]["id"]}  # no since


async def test_a_heartbeat_reveals_a_lost_final_update_and_the_repair_replays_it(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    seen: list[dict[str, Any]] = []

    async def script(ws: web.WebSocketResponse) -> None:
        seen.append(request := await receive(ws))
        await subscribed(ws, request, 0, "")
        await update(ws, 1, epoch="E")
        # update 2 lost on the way; then the topic goes quiet
        await send(ws, type="heartbeat", n=1, ts=3.0, topics={"A": {"seq": 2, "epoch": "E"}})
        seen.append(await receive(ws))
        await send(ws, type="unsubscribed", topics=["A"], id=seen[-1]["id"])
        seen.append(request := await receive(ws))
        await subscribed(ws, request, 2, "E", recovered=True)
        await update(ws, 2)
        await hold(ws)

    url = await scripted(script)
    async with Client(url, "ticker", ["A"], backoff=FAST, position_heartbeat=5) as client:
        events = await take(client, 2)
    assert [(e.seq, e.replayed) for e in events] == [(1, False), (2, True)]
    assert seen[0]["heartbeat"] == 5
    assert seen[2]["since"] == {"A": {"seq": 1, "epoch": "E"}} and "heartbeat" not in seen[2]


async def test_without_reconnect_a_close_or_a_retryable_refusal_raises(
    scripted: Callable[..., Awaitable[str]],
) -> None:
    frames: list[dict[str, Any]] = []

    async def drain(ws: web.WebSocketResponse) -> None:
        request = await receive(ws)
        await subscribed(ws, request, 0, "")
        await ws.close(code=1012, message=b"draining")

    url = await scripted(drain)
    client = Client(url, "ticker", ["*"], reconnect=False, on_frame=frames.append)
    with pytest.raises(ClosedByGateway, match="1012: draining"):
        await take(client, 1)
    assert [f["type"] for f in frames] == ["subscribed"]
    full = web.json_response({"error": "capacity", "message": "full"}, status=503)
    url = await scripted(full)
    with pytest.raises(ConnectRefused, match="503 capacity: full"):
        await take(Client(url, "ticker", ["A"], reconnect=False), 1)
    assert await client_tasks_left() == []


def test_topics_must_be_named() -> None:
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:1", "ticker", ["*"])
