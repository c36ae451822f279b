"""Opening the clients: topic assignment, sockets, handshakes and subscriptions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from .client import Client, Stats, client_frame
from .config import Config

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: MSS of the clients that stop reading: with it and a small SO_RCVBUF the server's kernel
#: holds about 200 KiB for such a client, as over a real network path, not 4 MiB.
SLOW_MSS = 536
#: Seconds one client may take to connect, upgrade and be subscribed.
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class Fleet:
    """The clients, which topics each holds, and what each topic fans out to."""

    clients: list[Client] = field(default_factory=list)
    fanout: dict[str, int] = field(default_factory=dict)  # topic -> reading subscribers
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def topic_names(count: int) -> list[str]:
    return [f"T{i}" for i in range(count)]


def assign_topics(cfg: Config, rng: random.Random) -> list[list[str]]:
    """Each client's topics: ``subs_per_client`` distinct ones, by Zipf popularity."""
    names = topic_names(cfg.topics)
    per_client = min(cfg.subs_per_client, len(names))
    weights = [1.0 / (rank + 1) ** cfg.zipf for rank in range(len(names))]
    result = []
    for _ in range(cfg.clients):
        chosen: dict[str, None] = {}
        while len(chosen) < per_client:
            chosen[rng.choices(names, weights)[0]] = None
        result.append(list(chosen))
    return result


async def open_fleet(
    cfg: Config, stats: Stats, subscribe: bool, log: Callable[[str], None]
) -> Fleet:
    """Connect (and subscribe) every client, at most ``concurrency`` handshakes at a time."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(cfg.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    rng = random.Random(cfg.seed)
    topics = assign_topics(cfg, rng) if subscribe else [[] for _ in range(cfg.clients)]
    slow_count = round(cfg.clients * cfg.slow_fraction)
    slow = set(rng.sample(range(cfg.clients), slow_count))
    fleet = Fleet(clients=[])
    gate = asyncio.Semaphore(cfg.concurrency)
    # Parsing a stamp costs as much as counting a chunk; a spread subset of the clients
    # gives the same distribution for less of the generator's core.
    every = max(1, -(-cfg.clients // cfg.sample_clients))
    started = time.perf_counter()
    last_log = started

    async def connect(index: int) -> None:
        nonlocal last_log
        key = base64.b64encode(os.urandom(16))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        request = (
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            ).encode()
            + b"Sec-WebSocket-Key: "
            + key
            + b"\r\n\r\n"
        )
        sub = None
        if subscribe:
            body = orjson.dumps({"type": "subscribe", "topics": topics[index], "id": 1})
            sub = client_frame(0x1, body)
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            # Close with RST: thousands of runs' worth of TIME_WAIT would exhaust the
            # ephemeral ports of 127.0.0.1.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if index in slow:
                # A small MSS (IPv4's default) and receive buffer: on loopback (MSS 64 KiB)
                # the server's kernel would otherwise autotune its send buffer to 4 MiB and
                # hide minutes of a slow client's backlog from the server's own memory.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MSS)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.slow_rcvbuf)
            ready: asyncio.Future[None] = loop.create_future()
            sampler = index % every == 0
            client = Client(stats, request, accept, sub, index in slow, ready, sampler)
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    await loop.sock_connect(sock, (host, port))
                    await loop.create_connection(lambda: client, sock=sock)
                    await ready
            except (OSError, TimeoutError) as exc:
                client.abort()
                sock.close()
                fleet.errors.append(f"{type(exc).__name__}: {exc}".strip())
                return
            fleet.clients.append(client)
        if index not in slow:
            for topic in topics[index]:
                fleet.fanout[topic] = fleet.fanout.get(topic, 0) + 1
        now = time.perf_counter()
        if now - last_log >= cfg.progress:
            last_log = now
            log(f"connecting {len(fleet.clients)}/{cfg.clients}")

    await asyncio.gather(*(connect(i) for i in range(cfg.clients)))
    fleet.seconds = time.perf_counter() - started
    return fleet
