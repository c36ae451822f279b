"""What every peer shares: numbering published messages, the publish endpoint for peers
that serve only WebSocket upgrades, and the file-descriptor limit.

Each peer differs only in how it fans an update out; this turns a publish body into
``(topic, update)`` pairs shaped exactly like wsgateway's, so frame sizes match.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web


def numbered_updates(
    body: dict[str, Any], sequences: dict[str, int]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(topic, update)`` for each message of a ``{"messages": [...]}`` body, numbered per
    topic in ``sequences``."""
    for message in body["messages"]:
        topic = message["topic"]
        sequences[topic] = sequences.get(topic, 0) + 1
        yield (
            topic,
            {
                "type": "update",
                "channel": message["channel"],
                "topic": topic,
                "seq": sequences[topic],
                "ts": time.time(),
                "data": message["data"],
            },
        )


def raise_file_limit() -> None:
    """Thousands of sockets need more than the usual 1,024 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_publish(
    publish: Callable[[web.Request], Awaitable[web.Response]], port: int
) -> int:
    """``POST /api/publish`` on ``port``, an aiohttp app in the peer's own loop: the same
    publish path wsgateway and the aiohttp peers pay for. Returns the port bound (``port``
    may be 0)."""
    app = web.Application()
    app.router.add_post("/api/publish", publish)
    return await serve_aiohttp(app, port)


async def serve_aiohttp(app: web.Application, port: int) -> int:
    """Serve ``app`` on 127.0.0.1:``port``; returns the port bound. The benchmark passes 0 and
    reads the port from the line each peer prints: a port picked by the benchmark and freed
    before the peer binds it can be taken by another process in between."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return int(runner.addresses[0][1])
