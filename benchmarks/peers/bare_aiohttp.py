"""A bare aiohttp WebSocket server that accepts connections and holds them, nothing else.

The floor for the idle-footprint scenario: RSS per idle connection of aiohttp's own
WebSocket machinery, beside which the gateway's per-connection state is measured.
"""

from __future__ import annotations

import asyncio

import uvloop
from aiohttp import web
from bench_protocol import announce, command_line, serve_aiohttp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for _ in ws:
        pass
    return ws


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/ws/ticker", websocket)
    port = await serve_aiohttp(app, port)
    announce("bare_aiohttp", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    args = command_line(__doc__, 8084)
    uvloop.run(main(args.port))
