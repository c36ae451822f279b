"""A python-websockets fan-out server using ``websockets.broadcast()``, compression off.

Speaks the bench protocol (see ``wsgateway/loadgen/``): WebSocket clients on
``ws://127.0.0.1:PORT/ws/ticker``. python-websockets serves only GET requests, so publishers
POST to a small aiohttp endpoint on ``--publish-port`` in the same process and event loop,
the same aiohttp publish path every other server in the benchmark pays for.
"""

from __future__ import annotations

import json
from typing import Any

import uvloop
from aiohttp import web
from bench_protocol import announce, command_line, numbered_updates, serve_publish
from websockets.asyncio.server import ServerConnection, broadcast, serve

subscribers: dict[str, set[ServerConnection]] = {}
sequences: dict[str, int] = {}


async def handler(ws: ServerConnection) -> None:
    if ws.request is None or ws.request.path != "/ws/ticker":
        await ws.close(1008, "unknown path")
        return
    topics: list[str] = []
    try:
        async for raw in ws:
            request = json.loads(raw)
            if request.get("type") == "subscribe":
                for topic in request["topics"]:
                    subscribers.setdefault(topic, set()).add(ws)
                    topics.append(topic)
                reply = {"type": "subscribed", "topics": request["topics"], "id": request.get("id")}
                await ws.send(json.dumps(reply))
    finally:
        for topic in topics:
            subscribers[topic].discard(ws)


async def publish(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    for topic, update in numbered_updates(body, sequences):
        # Encoded once per message; broadcast() frames it for each connection.
        broadcast(subscribers.get(topic, ()), json.dumps(update, separators=(",", ":")))
    return web.json_response({"accepted": len(body["messages"])})


async def main(port: int, publish_port: int) -> None:
    publish_port = await serve_publish(publish, publish_port)
    async with serve(handler, "127.0.0.1", port, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        announce("websockets", port, publish_port)
        await server.serve_forever()


if __name__ == "__main__":
    args = command_line(__doc__, 8082, separate_publish=True)
    uvloop.run(main(args.port, args.publish_port))
