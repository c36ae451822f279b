"""Replay harness (issue 9): a recorded synthetic market feed replayed at full speed against
a real gateway and its clients, then every client's end state checked against the feed.

    python benchmarks/replay.py --broker memory --deltas 100000 --symbols 20 --seed 1
    python benchmarks/replay.py --broker redis --deltas 100000 --symbols 20 --seed 1

The feed (benchmarks/feed.py): per symbol a book snapshot, then level deltas, ticker values
and trades, published over HTTP (POST /api/publish, batches, one request in flight so the
order is the feed's) to a ``wsgateway serve`` subprocess. Clients over real WebSockets
(aiohttp), on each of ``orderbook`` (book), ``ticker`` (last) and ``trades`` (stream):

- fast: read everything as it comes;
- slow: sleep between reads (``--slow-rate`` frames a second) and now and then stop reading
  for ``--stall`` seconds, longer than the gateway's ``slow_consumer_grace``, with a small
  receive buffer: on book/last they should get conflated frames (``from_seq``), on trades
  they are cut with 1013 (or 1006, when the close frame is lost behind the bytes they did
  not read) and resume with ``since``;
- rated: subscribe with ``max_rate`` (book/last only);
- flaky: drop the connection (no close handshake) at random moments and resume with
  ``since`` after a random pause, some long enough that a book or ticker resume is not
  recovered and gets a snapshot.

One of each kind joins mid-feed (its subscribe races the feed). Every frame is checked as
it arrives (benchmarks/replaycheck.py); after the feed, once every client reached the feed's
last seq of every topic (or ``--settle`` seconds passed), the end state is checked. Progress
goes to stderr, a summary table to stdout; ``--json`` writes the figures.

Exit status: 0 every checked property held; 1 a property was violated (the reasons are
printed); 2 the gateway did not start or the publisher failed; 3 the gateway cannot run the
replay (e.g. its broker has no book mode yet): the reason is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feed import BOOK, CHANNELS, LAST, STREAM, Feed
from replaycheck import ClientCheck, Tally

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("fast", "slow", "rated", "flaky")
#: a slow reader sleeps after every SLOW_EVERY frames, to read --slow-rate frames a second,
#: and stops reading for --stall seconds after every STALL_AFTER seconds of reading
SLOW_EVERY = 10
STALL_AFTER = (1.0, 3.0)
#: a slow reader's socket: what a distant client's path holds, not loopback's megabytes
#: (benchmarks/README.md, "Slow clients")
SLOW_RCVBUF = 4096
SLOW_MSS = 536
#: a flaky client drops its connection after this many frames, then waits (seconds): short
#: pauses resume from history, long ones (book, ticker) past it, with a snapshot
FLAKY_FRAMES = (200, 4000)
FLAKY_SHORT = (0.0, 0.05)
FLAKY_LONG = (0.5, 1.5)
FLAKY_LONG_CHANCE = 0.3
#: the late clients join when this share of the feed has been published
LATE_AT = 0.4
#: the server metrics reported beside the clients' own counts
SERVER_METRICS = (
    "wsgateway_conflated_updates_total",
    "wsgateway_checksum_frames_total",
    "wsgateway_resumes_total",
    "wsgateway_slow_consumers_total",
    "wsgateway_frames_sent_total",
    "wsgateway_disconnects_total",
)


def log(text: str) -> None:
    print(f"[replay] {text}", file=sys.stderr, flush=True)


# -- the gateway and its broker -------------------------------------------------------------


class GatewayProcess:
    """``python -m wsgateway serve --port 0`` with the replay's settings; output kept."""

    def __init__(self, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATEWAY_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgateway", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.port = 0
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError("the gateway did not start:\n" + "".join(self.lines[-30:]))
        # Keep reading, so that a chatty log never fills the pipe and blocks the gateway.
        self._reader = threading.Thread(target=self._read_rest, daemon=True)
        self._reader.start()

    def _read_rest(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, channel: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{channel}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def gateway_args(args: argparse.Namespace, broker_url: str) -> list[str]:
    history = args.deltas + 100  # every trade of a topic stays resumable
    settings = [
        "connections_per_minute=1000000",
        f"heartbeat={args.heartbeat}",
        "max_connections_per_ip=10000",
        f"max_outbox_bytes={args.outbox_bytes}",
        f"channel.{BOOK}.max_book_levels={args.book_levels}",
        f"channel.{STREAM}.history_size={history}",
        f"channel.{STREAM}.max_replay={history}",
    ]
    out = ["--broker", broker_url, "--log-level", "WARNING"]
    for setting in settings:
        out += ["--set", setting]
    return out


@contextlib.contextmanager
def broker(kind: str) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
        return
    import redisproc

    if not redisproc.available():
        raise SystemExit(f"redis-server not found at {redisproc.REDIS_SERVER}")
    with redisproc.redis_server() as redis:
        yield redis.url


# -- what the gateway can do ------------------------------------------------------------------


@dataclass
class Capabilities:
    #: why the replay cannot run (None: it can)
    missing: str | None = None
    max_rate: bool = False
    conflation: bool = False


async def probe(http: aiohttp.ClientSession, gw: GatewayProcess) -> Capabilities:
    """Book and last topics work on this broker (a publish, then a snapshot on subscribe);
    ``max_rate`` is understood (refused on a stream channel); conflation is counted."""
    caps = Capabilities()
    probes = [
        (BOOK, {"bids": [["1", "1"]], "asks": [], "snapshot": True}),
        (LAST, {"probe": True}),
    ]
    for channel, data in probes:
        body = {"channel": channel, "topic": "PROBE", "data": data}
        async with http.post(gw.http + "/api/publish", json=body) as response:
            if response.status != 200:
                text = (await response.text())[:300]
                caps.missing = f"publishing to {channel} failed: {response.status} {text}"
                return caps
        async with http.ws_connect(gw.ws(channel)) as ws:
            await ws.send_json({"type": "subscribe", "topics": ["PROBE"]})
            kinds = []
            with contextlib.suppress(TimeoutError):
                while len(kinds) < 2:
                    msg = await ws.receive(timeout=5)
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        kinds.append(f"{msg.type.name} {msg.data}")  # e.g. CLOSE 1011
                        break
                    kinds.append(orjson.loads(msg.data)["type"])
            if kinds != ["subscribed", "snapshot"]:
                caps.missing = f"no snapshot on subscribe to a {channel} topic (got {kinds})"
                return caps
    async with http.ws_connect(gw.ws(STREAM)) as ws:
        await ws.send_json({"type": "subscribe", "topics": ["PROBE"], "max_rate": 5})
        reply = await ws.receive_json(timeout=5)
        caps.max_rate = reply.get("type") == "error" and reply.get("code") == "bad_message"
    async with http.get(gw.http + "/metrics") as response:
        caps.conflation = "wsgateway_conflated_updates_total" in await response.text()
    return caps


async def server_metrics(http: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    """The replay's channels' figures from /metrics, summed over labels but ``outcome``,
    ``kind`` and ``reason`` (each by channel for disconnects)."""
    async with http.get(gw.http + "/metrics") as response:
        text = await response.text()
    figures: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name not in SERVER_METRICS or sample.labels.get("channel") not in CHANNELS:
                continue
            detail = sample.labels.get("outcome") or sample.labels.get("kind")
            if name == "wsgateway_disconnects_total":
                if not sample.value or sample.labels["reason"] == "client_closed":
                    continue
                detail = f"{sample.labels['channel']} {sample.labels['reason']}"
            key = f"{name}{{{detail}}}" if detail else name
            figures[key] = figures.get(key, 0) + int(sample.value)
    return figures


# -- clients --------------------------------------------------------------------------------


@dataclass
class Run:
    """What the clients share: the gateway, the phase of the run, the sessions."""

    gw: GatewayProcess
    http: aiohttp.ClientSession
    slow_http: aiohttp.ClientSession
    max_rate: float
    slow_rate: float
    stall: float
    caps: Capabilities
    late: asyncio.Event = field(default_factory=asyncio.Event)
    fed: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Client:
    """One replay client: connects, subscribes (with ``since`` after the first time),
    reads, and behaves as its kind says; every frame goes to its :class:`ClientCheck`."""

    def __init__(self, kind: str, channel: str, late: bool, check: ClientCheck, seed: int):
        self.kind = kind
        self.channel = channel
        self.late = late
        self.check = check
        self.rng = random.Random(seed)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.subscribed = asyncio.Event()
        #: a flaky client's first drop comes by this many frames at the latest
        self.drop_by = FLAKY_FRAMES[1]
        self.drops = 0

    async def run(self, run: Run) -> None:
        if self.late:
            await run.late.wait()
        resumed = False
        failures = 0
        while not run.stop.is_set():
            try:
                pause = await self.session(run, resumed)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                if failures > 20:
                    self.check.violation(f"cannot connect: {type(exc).__name__}: {exc}")
                    return
                pause = 0.2
            else:
                failures = 0
                resumed = True
            if pause and not run.stop.is_set():
                await asyncio.sleep(pause)

    async def session(self, run: Run, resumed: bool) -> float:
        """One connection; returns how long to wait before the next one."""
        slow = self.kind == "slow"
        http = run.slow_http if slow else run.http
        check = self.check
        ws = await http.ws_connect(run.gw.ws(self.channel), max_msg_size=0, heartbeat=None)
        self.ws = ws
        try:
            message: dict[str, Any] = {"type": "subscribe", "topics": list(check.topics), "id": 1}
            if resumed:
                message["since"] = check.since()
            if self.kind == "rated":
                message["max_rate"] = run.max_rate
            await ws.send_str(orjson.dumps(message).decode())
            drop_after = None
            if self.kind == "flaky" and (self.drops == 0 or not run.fed.is_set()):
                drop_after = self.rng.randint(*FLAKY_FRAMES)
                if self.drops == 0:
                    drop_after = min(drop_after, self.rng.randint(1, self.drop_by))
            frames = 0
            stall_at = time.monotonic() + self.rng.uniform(*STALL_AFTER)
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(msg.data)
                    if frame.get("type") == "subscribed":
                        check.subscribed(frame, resumed)
                        self.subscribed.set()
                        continue
                    check.frame(frame, time.monotonic())
                    frames += 1
                    if slow and frames % SLOW_EVERY == 0:
                        await asyncio.sleep(SLOW_EVERY / run.slow_rate)
                        if time.monotonic() > stall_at and not run.fed.is_set():
                            await asyncio.sleep(run.stall)
                            stall_at = time.monotonic() + self.rng.uniform(*STALL_AFTER)
                    if drop_after is not None and frames >= drop_after:
                        self.drop(ws)
                        self.drops += 1
                        check.tally.drops += 1
                        long = self.rng.random() < FLAKY_LONG_CHANCE
                        return self.rng.uniform(*(FLAKY_LONG if long else FLAKY_SHORT))
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):  # fmt: skip
                    # The code the gateway sent; aiohttp's close_code says 1006 when the
                    # gateway ended the TCP connection before aiohttp's close reply.
                    code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
                    check.closed(code)
                    if run.stop.is_set():
                        return 0.0
                    if code == 1006 and slow:
                        # Cut while its unread bytes filled both ends: the gateway resets
                        # the connection after close_timeout, and the close frame is lost.
                        check.tally.lost += 1
                    elif code != 1013:
                        check.violation(f"closed by the gateway with {code} ({msg.extra!r})")
                    return 0.0
                check.violation(f"unexpected WebSocket message {msg.type}")
        finally:
            self.ws = None
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2)

    @staticmethod
    def drop(ws: aiohttp.ClientWebSocketResponse) -> None:
        """Gone without a close handshake, as a lost network does it."""
        connection = ws._conn  # aiohttp has no public abort
        if connection is not None and connection.transport is not None:
            connection.transport.abort()

    async def close(self) -> None:
        ws = self.ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)


def slow_socket(addr_info: Any) -> socket.socket:
    family, kind, proto, _name, _address = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MSS)
    return sock


def make_clients(args: argparse.Namespace, feed: Feed, caps: Capabilities) -> list[Client]:
    clients = []
    seed = args.seed * 1000
    for channel in CHANNELS:
        for kind in KINDS:
            if kind == "rated" and channel == STREAM:
                continue  # max_rate is refused on a stream channel
            count = getattr(args, kind)
            for i in range(count):
                late = i == 1  # the second of each kind joins mid-feed
                name = f"{channel}/{kind}{i}{'-late' if late else ''}"
                check = ClientCheck(name, channel, feed.symbols, feed.reference)
                seed += 1
                client = Client(kind, channel, late, check, seed)
                # Every flaky client drops at least once, even in a short feed: within the
                # first half of its channel's messages.
                client.drop_by = max(1, feed.counts()[channel] // 2)
                clients.append(client)
    return clients


# -- the run --------------------------------------------------------------------------------


async def publish(run: Run, feed: Feed, batch: int) -> float:
    """The whole feed, one batch at a time; returns the seconds it took."""
    messages = feed.messages
    started = time.perf_counter()
    late_at = int(len(messages) * LATE_AT)
    next_report = started + 2
    for start in range(0, len(messages), batch):
        body = orjson.dumps({"messages": messages[start : start + batch]})
        async with run.http.post(
            run.gw.http + "/api/publish", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"publish failed: {response.status} {await response.text()}")
        if start + batch >= late_at:
            run.late.set()
        if time.perf_counter() > next_report:
            next_report += 2
            log(f"published {start + batch} of {len(messages)}")
    return time.perf_counter() - started


async def settle(clients: list[Client], seconds: float) -> bool:
    """Wait until every client stands at the feed's last seq of every topic (at most
    ``seconds``)."""
    deadline = time.monotonic() + seconds
    next_report = time.monotonic() + 2
    while time.monotonic() < deadline:
        behind = [c for c in clients if not c.check.done()]
        if not behind:
            return True
        if time.monotonic() > next_report:
            next_report += 2
            names = ", ".join(c.check.name for c in behind[:6])
            log(f"waiting for {len(behind)} client(s): {names}")
        await asyncio.sleep(0.1)
    return False


async def replay(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    log(f"generating the feed: {args.symbols} symbols, {args.deltas} deltas, seed {args.seed}")
    feed = Feed(args.symbols, args.deltas, args.seed, args.book_levels)
    log(f"feed: {len(feed.messages)} messages {feed.counts()}")
    result: dict[str, Any] = {"broker": args.broker, "feed": feed.counts(), "seed": args.seed}
    with broker(args.broker) as url:
        try:
            gw = GatewayProcess(gateway_args(args, url))
        except RuntimeError as exc:
            log(str(exc))
            return 2, result
        try:
            return await drive(args, feed, gw, result)
        finally:
            gw.stop()
            if args.gateway_log is not None:
                args.gateway_log.write_text("".join(gw.lines))


async def drive(
    args: argparse.Namespace, feed: Feed, gw: GatewayProcess, result: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    slow_connector = aiohttp.TCPConnector(limit=0, socket_factory=slow_socket)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        aiohttp.ClientSession(connector=slow_connector) as slow_http,
    ):
        caps = await probe(http, gw)
        result["capabilities"] = asdict(caps)
        if caps.missing:
            log(f"cannot replay on this gateway: {caps.missing}")
            result["missing"] = caps.missing
            return 3, result
        run = Run(gw, http, slow_http, args.max_rate, args.slow_rate, args.stall, caps)
        clients = make_clients(args, feed, caps)
        tasks = [asyncio.create_task(c.run(run)) for c in clients]
        early = [c for c in clients if not c.late]
        await asyncio.wait_for(asyncio.gather(*(c.subscribed.wait() for c in early)), 30)
        log(f"{len(clients)} clients ({len(early)} subscribed before the feed)")
        started = time.perf_counter()
        try:
            publish_seconds = await publish(run, feed, args.batch)
        except (RuntimeError, aiohttp.ClientError) as exc:
            log(str(exc))
            run.stop.set()
            for task in tasks:
                task.cancel()
            return 2, result
        run.late.set()
        run.fed.set()
        log(f"feed published in {publish_seconds:.1f} s; waiting for the clients")
        settled = await settle(clients, args.settle)
        wall = time.perf_counter() - started
        run.stop.set()
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        result["server"] = await server_metrics(http, gw)
    problems: list[str] = []
    notes: list[str] = []
    if not settled:
        problems.append(f"not every client reached the feed's end within {args.settle} s")
    for client in clients:
        rated = client.kind == "rated" and caps.max_rate
        client.check.finish(args.max_rate if rated else None)
        problems += client.check.problems
        if client.check.tally.violations > len(client.check.problems):
            extra = client.check.tally.violations - len(client.check.problems)
            problems.append(f"{client.check.name}: ... and {extra} more")
        cut = client.check.tally.cuts + client.check.tally.lost
        slow_cuts = result["server"].get(
            f"wsgateway_disconnects_total{{{client.channel} slow_consumer}}", 0
        )
        if caps.conflation and client.channel != STREAM and cut and not slow_cuts:
            # Not the slow-consumer rule: the gateway's ping went unanswered for half of
            # its heartbeat (a client too busy, or stalled, to read it), which conflation
            # cannot help; reported, not a violation (--heartbeat sets the interval).
            notes.append(
                f"{client.check.name}: closed {cut} time(s) by the ping timeout "
                f"(heartbeat {args.heartbeat:g} s), resumed"
            )
        elif caps.conflation and client.channel != STREAM and cut:
            problems.append(
                f"{client.check.name}: cut (1013/1006) {cut} time(s) on a "
                f"{client.check.mode} channel, where slow clients are conflated"
            )
    pending = []
    if not caps.conflation:
        pending.append("conflation: 1013 cuts on book/last are not violations yet")
    if not caps.max_rate:
        pending.append("max_rate: not understood (ignored); rated clients are not rate-checked")
    result.update(
        wall_seconds=round(wall, 2),
        publish_seconds=round(publish_seconds, 2),
        publish_rate=round(len(feed.messages) / publish_seconds),
        rows=summary_rows(clients),
        pending=pending,
        notes=notes,
        problems=problems,
    )
    return (1 if problems else 0), result


def summary_rows(clients: list[Client]) -> list[dict[str, Any]]:
    rows = []
    for channel in CHANNELS:
        for kind in KINDS:
            group = [c for c in clients if c.channel == channel and c.kind == kind]
            if not group:
                continue
            tally = Tally()
            for client in group:
                tally.add(client.check.tally)
            rows.append({"channel": channel, "kind": kind, "clients": len(group), **asdict(tally)})
    return rows


COLUMNS = (
    ("channel", "channel"),
    ("kind", "kind"),
    ("clients", "clients"),
    ("frames", "frames"),
    ("conflated", "conflated"),
    ("folded", "folded"),
    ("snapshots", "snapshots"),
    ("checksums", "checksum frames"),
    ("resumes", "resumes"),
    ("not_recovered", "not recovered"),
    ("cuts", "1013 cuts"),
    ("lost", "1006"),
    ("drops", "drops"),
    ("violations", "violations"),
)


def print_summary(code: int, result: dict[str, Any]) -> None:
    if "rows" not in result:
        print(f"replay did not run: {result.get('missing', 'see stderr')}")
        return
    feed = result["feed"]
    print(
        f"## replay: broker {result['broker']}, seed {result['seed']}, "
        f"{sum(feed.values())} messages ({', '.join(f'{k} {v}' for k, v in feed.items())})\n"
    )
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    totals = Tally()
    for row in result["rows"]:
        print("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |")
        totals.add(Tally(**{k: row[k] for k in Tally.__dataclass_fields__}))
    total = {"channel": "all", "kind": "", "clients": sum(r["clients"] for r in result["rows"])}
    total.update(asdict(totals))
    print("| " + " | ".join(f"**{total[key]}**" for key, _ in COLUMNS) + " |")
    print(
        f"\nwall {result['wall_seconds']} s (publish {result['publish_seconds']} s, "
        f"{result['publish_rate']} msg/s)"
    )
    print("server: " + ", ".join(f"{k} {v}" for k, v in sorted(result["server"].items())))
    for line in result["pending"]:
        print(f"pending: {line}")
    for line in result.get("notes", []):
        print(f"note: {line}")
    if code:
        print(f"\nFAILED: {len(result['problems'])} problem(s)")
        for problem in result["problems"][:100]:
            print(f"- {problem}")
    else:
        print("\nOK: every checked property held")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("memory", "redis"), default="memory")
    parser.add_argument("--deltas", type=int, default=100_000, help="book deltas in the feed")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    for kind, default in (("fast", 2), ("slow", 2), ("rated", 2), ("flaky", 3)):
        parser.add_argument(
            f"--{kind}", type=int, default=default, help=f"{kind} clients per channel"
        )
    parser.add_argument("--max-rate", type=float, default=5.0, help="the rated clients' max_rate")
    parser.add_argument(
        "--slow-rate", type=float, default=1000.0, help="frames a second a slow client reads"
    )
    parser.add_argument(
        "--stall", type=float, default=3.0, help="seconds a slow client stops reading at times"
    )
    parser.add_argument("--batch", type=int, default=500, help="messages per publish request")
    parser.add_argument("--book-levels", type=int, default=50, help="max_book_levels")
    parser.add_argument(
        "--outbox-bytes", type=int, default=1_048_576, help="max_outbox_bytes of every channel"
    )
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to wait at the end")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=20.0,
        help="the gateway's ping interval (its heartbeat limit; a pong is due within half)",
    )
    parser.add_argument("--gateway-log", type=Path, help="write the gateway's output here")
    args = parser.parse_args()
    try:
        import uvloop

        code, result = uvloop.run(replay(args))
    except ImportError:
        code, result = asyncio.run(replay(args))
    print_summary(code, result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
