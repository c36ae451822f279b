"""A bare aiohttp WebSocket server that accepts connections and holds them, nothing else.

The floor for the idle-footprint scenario: RSS per idle connection of aiohttp's own
WebSocket machinery, beside which the gateway's per-connection state is measured.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web
from bench_protocol import raise_file_limit, serve_aiohttp


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
    print(f"bare_aiohttp listening on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8084)
    args = parser.parse_args()
    raise_file_limit()
    uvloop.run(main(args.port))
