"""A naive aiohttp fan-out server: the usual ``for ws in clients: await ws.send_json(msg)``.

Speaks the bench protocol (see ``wsgateway/loadgen/``) on ``--port``: WebSocket clients on
``/ws/ticker``, publishers on ``POST /api/publish``. This is what most tutorials show, and the
baseline the gateway is measured against.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import uvloop
from aiohttp import WSMsgType, web
from bench_protocol import announce, command_line, numbered_updates, serve_aiohttp

SUBSCRIBERS = web.AppKey("subscribers", dict[str, set[web.WebSocketResponse]])
SEQUENCES = web.AppKey("sequences", dict[str, int])


async def websocket(request: web.Request) -> web.WebSocketResponse:
    subscribers = request.app[SUBSCRIBERS]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    topics: list[str] = []
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            request_ = json.loads(msg.data)
            if request_.get("type") == "subscribe":
                for topic in request_["topics"]:
                    subscribers.setdefault(topic, set()).add(ws)
                    topics.append(topic)
                await ws.send_json(
                    {"type": "subscribed", "topics": request_["topics"], "id": request_.get("id")}
                )
    finally:
        for topic in topics:
            subscribers[topic].discard(ws)
    return ws


async def publish(request: web.Request) -> web.Response:
    subscribers = request.app[SUBSCRIBERS]
    sequences = request.app[SEQUENCES]
    body: dict[str, Any] = await request.json()
    for topic, update in numbered_updates(body, sequences):
        for ws in list(subscribers.get(topic, ())):
            with contextlib.suppress(ConnectionError):  # gone; its handler cleans up
                await ws.send_json(update)
    return web.json_response({"accepted": len(body["messages"])})


async def main(port: int) -> None:
    app = web.Application()
    app[SUBSCRIBERS] = {}
    app[SEQUENCES] = {}
    app.router.add_get("/ws/ticker", websocket)
    app.router.add_post("/api/publish", publish)
    port = await serve_aiohttp(app, port)
    announce("naive_aiohttp", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    args = command_line(__doc__, 8081)
    uvloop.run(main(args.port))
