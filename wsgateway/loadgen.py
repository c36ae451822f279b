"""A load generator for fan-out benchmarks: N WebSocket clients and an HTTP publisher.

``python -m wsgateway.loadgen --url ws://127.0.0.1:8080/ws/ticker --clients 1000`` opens the
clients, subscribes them, publishes through ``POST /api/publish`` and prints one JSON result
as the last line of stdout (progress goes to stderr). ``benchmarks/run.py`` drives it
against wsgateway and its peers; any server speaking the bench protocol works:

- a client sends ``{"type":"subscribe","topics":[...],"id":1}`` and waits for a frame
  containing ``"subscribed"``;
- a publisher POSTs ``{"messages":[{"channel","topic","data":{"t":<time.time()>,"pad":..}}]}``
  and every subscriber of the topic gets one text frame per message containing
  ``"type":"update"`` and the ``data`` object as it was published.

The generator must never be the bottleneck, so a client is a bare ``asyncio.Protocol``
(its own upgrade handshake, masked client frames) that does not parse frames at all: it
counts the ``"update"`` marker in each chunk with ``bytes.count`` (C speed, with the few
bytes around a chunk boundary checked separately so a marker split in two is counted once)
and takes one latency sample per chunk from the first ``"t":`` in it. The first one is the
oldest message the chunk completes, so a chunk's sample is its worst latency, not its best.
The generator reports its own CPU use; a result counts only while it stays below 90% of
one core (``generator_saturated``).

Scenarios (mechanisms; the benchmark scenarios are built from them):

- ``burst``: closed loop. Batches of ``--batch`` messages are posted back to back while at
  most ``--inflight`` batches are still undelivered, so the server always has work but no
  queue grows without bound; measures the highest sustained delivery rate.
- ``paced``: open loop at ``--rate`` messages per second, one message per POST; measures
  publish-to-receive latency at a given load.
- ``idle``: connects the clients without subscribing and holds them; with ``--server-pid``
  it reports the server's RSS per connection.
- ``storm``: opens the clients as fast as ``--concurrency`` allows; handshakes per second.

``--slow-fraction`` makes that share of the clients stop reading once subscribed (a small
MSS and ``SO_RCVBUF`` make their backlog reach the server within seconds). ``--server-pid``
adds the server's CPU seconds and RSS over the measured window, read from ``/proc`` (Linux),
and the CPU other processes used meanwhile (``background_cpu``, in cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import os
import random
import resource
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import orjson

SCENARIOS = ("burst", "paced", "idle", "storm")
#: Counted once per delivered update; the peers' JSON may put a space after the colon, so
#: the marker is the value alone. Topics and data are ours and never contain it.
UPDATE = b'"update"'
TAIL = len(UPDATE) - 1
PREFIXES = tuple(UPDATE[:n] for n in range(1, len(UPDATE)))  # a chunk ending so may split one
T_FIELD = b'"t":'
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A result is trusted only while the generator used less than this share of its core.
SATURATED = 0.9
#: Burst: seconds to wait for a batch's deliveries before writing them off as lost.
STALL_TIMEOUT = 2.0
#: MSS of the clients that stop reading: with it and a small SO_RCVBUF the server's kernel
#: holds about 200 KiB for such a client, as over a real network path, not 4 MiB.
SLOW_MSS = 536
#: Paced: requests in flight at most; past it, ticks are skipped (and counted).
MAX_PENDING_POSTS = 256
#: Seconds one client may take to connect, upgrade and be subscribed.
HANDSHAKE_TIMEOUT = 10.0
CONNECTING, SUBSCRIBING, OPEN = 0, 1, 2


class Stats:
    """Counters shared by all clients; kept flat because data_received touches them."""

    __slots__ = (
        "close_codes",
        "delivered",
        "lost",
        "samples",
        "sampling",
        "target",
        "unparsed",
        "waiter",
    )

    def __init__(self) -> None:
        self.delivered = 0
        self.sampling = False
        self.samples = array("d")  # publish-to-receive latency, seconds
        self.target = 0
        self.waiter: asyncio.Future[None] | None = None
        self.lost = 0
        self.unparsed = 0
        self.close_codes: dict[int, int] = {}

    async def wait_delivered(self, target: int) -> None:
        """Return once ``delivered >= target`` (the caller bounds the wait)."""
        if self.delivered >= target:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.target, self.waiter = target, waiter
        try:
            await waiter
        finally:
            self.waiter = None


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame (RFC 6455, 5.3: clients must mask)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    mask = os.urandom(4)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + masked


class Client(asyncio.Protocol):
    """One WebSocket client that counts updates and samples latency, nothing more."""

    def __init__(
        self,
        stats: Stats,
        request: bytes,
        accept: bytes,
        subscribe: bytes | None,
        slow: bool,
        ready: asyncio.Future[None],
        sampler: bool = True,
    ) -> None:
        self.stats = stats
        self.sampler = sampler
        self.request = request
        self.accept = accept
        self.subscribe = subscribe
        self.slow = slow
        self.ready = ready
        self.phase = CONNECTING
        self.buffer = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.phase != OPEN:
            self._setup(data)
            return
        stats = self.stats
        count = data.count(UPDATE)
        tail = self.tail
        if tail:
            # Both pieces are shorter than the marker, so a match here spans the boundary.
            count += (tail + data[:TAIL]).count(UPDATE)
            if len(data) < TAIL:
                data = tail + data
        # Keep the last bytes only when they could start a marker: most chunks end a frame
        # with "}", and then the next chunk needs no boundary check at all.
        self.tail = data[-TAIL:] if data.endswith(PREFIXES) else b""
        stats.delivered += count
        if stats.sampling and self.sampler:
            start = data.find(T_FIELD)
            if start >= 0:
                end = data.find(b",", start, start + 40)
                if end < 0:
                    end = data.find(b"}", start, start + 40)
                if end > 0:
                    try:
                        stats.samples.append(time.time() - float(data[start + 4 : end]))
                    except ValueError:  # not our stamp (try is cheaper than suppress here)
                        stats.unparsed += 1
        if b"\x89" in data or b"\x88" in data:
            self._control(data)
        waiter = stats.waiter
        if waiter is not None and stats.delivered >= stats.target and not waiter.done():
            waiter.set_result(None)

    def _control(self, data: bytes) -> None:
        # Updates are ASCII JSON, so 0x89/0x88 come from frame headers: a ping or a close,
        # or rarely a length byte. Without a frame parser a ping split across chunks is
        # missed and a length byte may draw an unsolicited pong, which RFC 6455 allows.
        transport = self.transport
        assert transport is not None
        for opcode in (0x89, 0x88):
            i = data.find(bytes((opcode,)))
            while 0 <= i < len(data) - 1:
                length = data[i + 1]
                payload = data[i + 2 : i + 2 + length]
                if length <= 125 and len(payload) == length:
                    if opcode == 0x89:
                        transport.write(client_frame(0xA, payload))
                    elif length >= 2:
                        code = int.from_bytes(payload[:2], "big")
                        if 1000 <= code < 5000:
                            self.stats.close_codes[code] = self.stats.close_codes.get(code, 0) + 1
                            transport.write(client_frame(0x8, payload[:2]))
                            transport.close()
                            return
                i = data.find(bytes((opcode,)), i + 1)

    def _setup(self, data: bytes) -> None:
        buffer = self.buffer + data
        transport = self.transport
        assert transport is not None
        if self.phase == CONNECTING:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            head = buffer[:end].lower()
            if not head.startswith(b"http/1.1 101") or self.accept.lower() not in head:
                status = buffer[:end].split(b"\r\n", 1)[0]
                self._fail(f"upgrade refused: {status!r}")
                return
            buffer = buffer[end + 4 :]
            if self.subscribe is None:
                self._opened(buffer)
                return
            self.phase = SUBSCRIBING
            transport.write(self.subscribe)
        at = buffer.find(b'"subscribed"')
        if at < 0:
            if b'"error"' in buffer:
                self._fail(f"subscribe refused: {buffer[:200]!r}")
            else:
                self.buffer = buffer
            return
        self._opened(buffer[at:])

    def _opened(self, rest: bytes) -> None:
        self.phase = OPEN
        self.buffer = b""
        if not self.ready.done():
            self.ready.set_result(None)
        if self.slow:
            assert self.transport is not None
            self.transport.pause_reading()
        elif rest:
            self.data_received(rest)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == OPEN:
            self.stats.lost += 1
        elif not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost during setup: {exc}"))

    def abort(self) -> None:
        self.phase = CONNECTING  # a connection we drop ourselves is not "lost"
        if self.transport is not None:
            self.transport.abort()


class ProcessProbe:
    """CPU seconds and RSS of another process, from /proc (Linux), so stdlib only."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime, all threads

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * self.page


def busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy (from /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """The server's RSS, sampled every 0.1 s while traffic runs, warm-up included: a slow
    consumer's backlog may peak and be dropped before the measured window starts."""

    def __init__(self, probe: ProcessProbe | None) -> None:
        self.probe = probe
        self.peak = self.last = 0

    async def watch(self) -> None:
        if self.probe is None:
            return
        while True:
            self.last = self.probe.rss_bytes()
            self.peak = max(self.peak, self.last)
            await asyncio.sleep(0.1)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Config:
    url: str
    publish_url: str
    clients: int
    scenario: str = "burst"
    topics: int = 1
    subs_per_client: int = 1
    zipf: float = 0.0
    rate: float = 50.0
    batch: int = 20
    inflight: int = 4
    pad: int = 60
    warmup: float = 2.0
    duration: float = 5.0
    slow_fraction: float = 0.0
    slow_rcvbuf: int = 4096
    concurrency: int = 64
    server_pid: int | None = None
    sample_clients: int = 250
    progress: float = 1.0
    seed: int = 1
    channel: str = "ticker"
    quiet: bool = False
    label: str = ""


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


class Publisher:
    """Posts messages to the server; knows how many deliveries each should produce."""

    def __init__(self, cfg: Config, session: aiohttp.ClientSession, fanout: dict[str, int]):
        self.cfg = cfg
        self.session = session
        self.fanout = fanout
        # Round-robin over the topics that have readers: each symbol ticks at the same rate,
        # popularity shows in how many clients hold it.
        self.topics = itertools.cycle(sorted(fanout) or topic_names(cfg.topics))
        self.pad = "x" * cfg.pad
        self.messages = 0  # messages posted while measuring
        self.counting = False
        self.errors = 0
        self.stalls = 0
        self.skipped = 0

    def body(self, count: int) -> tuple[bytes, int]:
        """A publish body of ``count`` messages stamped now, and its expected deliveries."""
        stamp = {"t": time.time(), "pad": self.pad}
        channel = self.cfg.channel
        topics = [next(self.topics) for _ in range(count)]
        messages = [{"channel": channel, "topic": topic, "data": stamp} for topic in topics]
        return orjson.dumps({"messages": messages}), sum(self.fanout.get(t, 0) for t in topics)

    async def post(self, body: bytes, count: int) -> None:
        if self.counting:
            self.messages += count
        try:
            async with self.session.post(
                self.cfg.publish_url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                if response.status != 200:
                    self.errors += 1
        except aiohttp.ClientError:
            self.errors += 1

    async def burst(self, stats: Stats) -> None:
        cfg = self.cfg
        expected = written_off = 0
        per_batch = cfg.batch * sum(self.fanout.values()) / max(1, len(self.fanout))
        window = int((cfg.inflight - 1) * per_batch)
        while True:
            target = expected - written_off - window
            if stats.delivered < target:
                try:
                    async with asyncio.timeout(STALL_TIMEOUT):
                        await stats.wait_delivered(target)
                except TimeoutError:
                    # Deliveries that never come (a client dropped) must not stop the loop.
                    self.stalls += 1
                    written_off = expected - stats.delivered - window
            body, deliveries = self.body(cfg.batch)
            expected += deliveries
            await self.post(body, cfg.batch)

    async def paced(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.cfg.rate
        pending: set[asyncio.Task[None]] = set()
        due = loop.time()
        try:
            while True:
                due += interval
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= MAX_PENDING_POSTS:  # the server is far behind: say so
                    self.skipped += 1
                    continue
                body, _ = self.body(1)
                task = loop.create_task(self.post(body, 1))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            # Requests still open when the run ends are abandoned, not failed.
            for task in pending:
                task.cancel()


def percentiles(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50": at(0.5),
        "p99": at(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "samples": len(ordered),
    }


class Window:
    """CPU, deliveries and server figures between two instants."""

    def __init__(self, stats: Stats, probe: ProcessProbe | None) -> None:
        self.stats, self.probe = stats, probe
        self.wall = time.perf_counter()
        self.cpu = own_cpu_seconds()
        self.delivered = stats.delivered
        self.server_cpu = probe.cpu_seconds() if probe else 0.0
        self.machine_cpu = busy_cpu_seconds()

    def since(self, start: Window) -> dict[str, Any]:
        wall = self.wall - start.wall
        delivered = self.delivered - start.delivered
        result: dict[str, Any] = {
            "seconds": round(wall, 3),
            "delivered": delivered,
            "deliveries_per_s": round(delivered / wall, 1) if wall > 0 else 0.0,
            "generator_cpu": round((self.cpu - start.cpu) / wall, 3) if wall > 0 else 0.0,
        }
        if wall > 0:
            # Whatever else ran on the machine meanwhile (other processes, interrupts): on a
            # shared box it explains a noisy figure.
            others = (self.machine_cpu - start.machine_cpu) - (self.cpu - start.cpu)
            if self.probe is not None:
                others -= self.server_cpu - start.server_cpu
            result["background_cpu"] = round(max(0.0, others) / wall, 3)
        if self.probe is not None:
            server_cpu = self.server_cpu - start.server_cpu
            result["server_cpu_s"] = round(server_cpu, 3)
            result["server_cpu"] = round(server_cpu / wall, 3) if wall > 0 else 0.0
            result["server_cpu_us_per_delivery"] = (
                round(server_cpu / delivered * 1e6, 3) if delivered else None
            )
        return result


async def run(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one scenario and return its result."""
    probe = ProcessProbe(cfg.server_pid) if cfg.server_pid else None
    stats = Stats()
    result: dict[str, Any] = {
        "scenario": cfg.scenario,
        "url": cfg.url,
        "clients": cfg.clients,
        "slow_clients": round(cfg.clients * cfg.slow_fraction),
        "topics": cfg.topics,
        "subs_per_client": cfg.subs_per_client,
    }
    if cfg.scenario in ("idle", "storm"):
        result.update(await run_connections(cfg, stats, probe, log))
        return result

    fleet = await open_fleet(cfg, stats, subscribe=True, log=log)
    result.update(
        connected=len(fleet.clients),
        connect_errors=len(fleet.errors),
        connect_seconds=round(fleet.seconds, 3),
        errors_sample=fleet.errors[:3],
    )
    log(f"connected {result['connected']} clients in {fleet.seconds:.2f}s")
    if not fleet.clients:
        result["error"] = "no client could connect and subscribe"
        return finish(result)
    rss = RssWatch(probe)
    loop = asyncio.get_running_loop()

    async def phase(name: str, seconds: float) -> None:
        begin = last = Window(stats, probe)
        # The small margin keeps a sleep that wakes a hair early from adding a last,
        # near-empty progress interval.
        while (elapsed := time.perf_counter() - begin.wall) < seconds - 0.01:
            await asyncio.sleep(min(cfg.progress, seconds - elapsed))
            now = Window(stats, probe)
            log(progress_line(name, now.wall - begin.wall, seconds, now.since(last), rss.last))
            last = now

    connector = aiohttp.TCPConnector(limit=MAX_PENDING_POSTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        publisher = Publisher(cfg, session, fleet.fanout)
        job = publisher.burst(stats) if cfg.scenario == "burst" else publisher.paced()
        tasks = [loop.create_task(job), loop.create_task(rss.watch())]
        try:
            await phase("warmup", cfg.warmup)
            start = Window(stats, probe)
            stats.sampling = publisher.counting = True
            await phase("measure", cfg.duration)
            end = Window(stats, probe)
            stats.sampling = publisher.counting = False
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    result.update(end.since(start))
    result["latency_ms"] = percentiles(stats.samples)
    result.update(
        published=publisher.messages,
        publish_rate=round(publisher.messages / result["seconds"], 1),
        publish_errors=publisher.errors,
        stalls=publisher.stalls,
        skipped_ticks=publisher.skipped,
        lost_connections=stats.lost,
        unparsed_samples=stats.unparsed,
        close_codes={str(k): v for k, v in sorted(stats.close_codes.items())},
    )
    if probe is not None:
        result["server_rss_bytes"] = probe.rss_bytes()
        result["server_rss_peak_bytes"] = max(rss.peak, result["server_rss_bytes"])
    for client in fleet.clients:
        client.abort()
    return finish(result)


async def run_connections(
    cfg: Config, stats: Stats, probe: ProcessProbe | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """``idle`` (hold connections, RSS per connection) and ``storm`` (handshakes per second)."""
    result: dict[str, Any] = {}
    fleets: list[Fleet] = []
    if cfg.scenario == "idle":
        # A first slice pays the server's one-time costs (imports on first use, buffers),
        # so the per-connection figure is the slope, not the intercept.
        first = max(1, min(100, cfg.clients // 10))
        fleets.append(await open_fleet(replace_clients(cfg, first), stats, False, log))
        await asyncio.sleep(0.5)
        rss_before = probe.rss_bytes() if probe else 0
        start = Window(stats, probe)
        fleets.append(
            await open_fleet(replace_clients(cfg, cfg.clients - first), stats, False, log)
        )
        await asyncio.sleep(max(0.5, cfg.duration))  # let the server settle
        end = Window(stats, probe)
        added = len(fleets[1].clients)
        result["connect_seconds"] = round(fleets[1].seconds, 3)
        if probe is not None:
            rss_after = probe.rss_bytes()
            result.update(
                server_rss_before_bytes=rss_before,
                server_rss_bytes=rss_after,
                rss_per_connection_bytes=round((rss_after - rss_before) / added) if added else None,
            )
    else:
        start = Window(stats, probe)
        fleets.append(await open_fleet(cfg, stats, False, log))
        end = Window(stats, probe)
        accepted = len(fleets[0].clients)
        wall = end.wall - start.wall
        result["handshakes_per_s"] = round(accepted / wall, 1) if wall > 0 else 0.0
        if probe is not None:
            server_cpu = end.server_cpu - start.server_cpu
            result["server_cpu_us_per_handshake"] = (
                round(server_cpu / accepted * 1e6, 1) if accepted else None
            )
    errors = [e for fleet in fleets for e in fleet.errors]
    figures = end.since(start)
    for name in ("delivered", "deliveries_per_s", "server_cpu_us_per_delivery"):
        figures.pop(name, None)
    result.update(
        figures,
        connected=sum(len(f.clients) for f in fleets),
        connect_errors=len(errors),
        errors_sample=errors[:3],
        lost_connections=stats.lost,
    )
    log(f"{cfg.scenario}: {result['connected']} connections in {result['seconds']:.2f}s")
    for fleet in fleets:
        for client in fleet.clients:
            client.abort()
    return finish(result)


def replace_clients(cfg: Config, clients: int) -> Config:
    return dataclasses.replace(cfg, clients=clients)


def finish(result: dict[str, Any]) -> dict[str, Any]:
    # The generator's own CPU decides whether the figures measure the server or us.
    result["generator_saturated"] = result.get("generator_cpu", 0.0) >= SATURATED
    result["valid"] = not (
        result["generator_saturated"]
        or result.get("connect_errors")
        or result.get("publish_errors")
        or result.get("error")
    )
    return result


def progress_line(
    phase: str, elapsed: float, total: float, figures: dict[str, Any], rss: int
) -> str:
    line = (
        f"{phase} {elapsed:4.1f}/{total:.1f}s  {figures['deliveries_per_s']:>11,.0f} deliveries/s"
        f"  generator cpu {figures['generator_cpu']:4.0%}"
    )
    if "server_cpu" in figures:
        line += f"  server cpu {figures['server_cpu']:4.0%}  rss {rss / 2**20:6.1f} MiB"
    return line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wsgateway.loadgen", description=__doc__.split("\n")[0]
    )
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws/ticker", help="WebSocket URL")
    p.add_argument("--publish-url", help="default: http://HOST:PORT/api/publish of --url")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--scenario", choices=SCENARIOS, default="burst")
    p.add_argument("--topics", type=int, default=1, help="number of topics, named T0, T1, ...")
    p.add_argument("--subs-per-client", type=int, default=1)
    p.add_argument("--zipf", type=float, default=0.0, help="Zipf exponent of topic popularity")
    p.add_argument("--rate", type=float, default=50.0, help="paced: messages per second")
    p.add_argument("--batch", type=int, default=20, help="burst: messages per POST")
    p.add_argument("--inflight", type=int, default=4, help="burst: undelivered batches at most")
    p.add_argument("--pad", type=int, default=60, help="padding bytes in each message's data")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--slow-fraction", type=float, default=0.0, help="share of clients not reading")
    p.add_argument("--slow-rcvbuf", type=int, default=4096, help="SO_RCVBUF of slow clients")
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="handshakes in flight at most (past the server's listen backlog, 100-128 for "
        "asyncio servers, SYNs are dropped and retried a second later)",
    )
    p.add_argument(
        "--sample-clients",
        type=int,
        default=250,
        help="clients (spread evenly) that take latency samples; the others only count",
    )
    p.add_argument("--server-pid", type=int, help="report this process's CPU and RSS")
    p.add_argument("--cpu", type=int, help="pin the generator to this core")
    p.add_argument("--progress", type=float, default=1.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the result to this file too")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--label", default="", help="shown in progress lines, e.g. the server's name")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    parts = urlsplit(args.url)
    publish_url = args.publish_url or f"http://{parts.hostname}:{parts.port or 80}/api/publish"
    channel = parts.path.rstrip("/").rsplit("/", 1)[-1] or "ticker"
    names = {f for f in Config.__dataclass_fields__ if f not in ("url", "publish_url", "channel")}
    return Config(
        url=args.url,
        publish_url=publish_url,
        channel=channel,
        **{name: getattr(args, name) for name in names},
    )


def raise_file_limit() -> None:
    """Thousands of sockets need thousands of descriptors: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    raise_file_limit()

    def log(line: str) -> None:
        if not cfg.quiet:
            print(f"[{cfg.label or 'loadgen'} {cfg.scenario}] {line}", file=sys.stderr, flush=True)

    with asyncio.Runner(loop_factory=new_loop) as runner:
        result = runner.run(run(cfg, log))
    text = orjson.dumps(result).decode()
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
