"""What every peer shares: numbering published messages, the publish endpoint for peers
that serve only WebSocket upgrades, the file-descriptor limit, the command line and the
lines that say where a peer listens.

Each peer differs only in how it fans an update out; this turns a publish body into
``(topic, update)`` pairs shaped exactly like wsgateway's, so frame sizes match.
"""

from __future__ import annotations

import argparse
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


def command_line(
    doc: str, default_port: int, *, separate_publish: bool = False
) -> argparse.Namespace:
    """``--port`` (and ``--publish-port`` for peers with a publish port of their own; default
    ``--port`` + 1); also raises the descriptor limit, as every peer needs it."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--port", type=int, default=default_port, help="0: a free port")
    if separate_publish:
        parser.add_argument("--publish-port", type=int, help="default: --port + 1 (0: a free port)")
    args = parser.parse_args()
    if separate_publish and args.publish_port is None:
        args.publish_port = args.port + 1
    raise_file_limit()
    return args


def announce(name: str, port: int, publish_port: int | None = None) -> None:
    """The lines benchmarks/run.py waits for (its LISTENING and PUBLISHING patterns): the
    ports bound, which are the only way it learns them when it passes port 0."""
    print(f"{name} listening on 127.0.0.1:{port}", flush=True)
    if publish_port is not None:
        print(f"publish on 127.0.0.1:{publish_port}", flush=True)
