#!/usr/bin/env python3
"""Run the fan-out benchmark suite of issue 3: wsgateway beside its peers, in one run.

    python benchmarks/run.py                  # every scenario, every server, medians of 3
    python benchmarks/run.py --quick          # CI smoke: tiny sizes, well under a minute
    python benchmarks/run.py --scenarios burst,paced --servers wsgateway,naive_aiohttp

Each measurement starts a fresh server process pinned to the first core and runs the load
generator (``python -m wsgateway.loadgen``) pinned to the second, on 127.0.0.1 only. The
generator reads the server's CPU seconds and RSS from /proc at the exact edges of its
measured window (the counters psutil reads) and flags a result taken while it used 90% or
more of its own core. Each measurement is repeated ``--runs`` times, the servers interleaved
within a run, and the tables show medians; ratios above 1 favour wsgateway. Output:
Markdown on stdout, progress on stderr, and a JSON file with every run. The ``bench`` extra
(``pip install -e '.[bench]'``) brings picows, python-websockets and psutil; a peer that is
not installed is skipped and named, and without psutil the same figures come from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # without the bench extra: the same counters, read from /proc (Linux)
    psutil = None

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from redisproc import RedisProcess, redis_server  # noqa: E402
from redisproc import available as redis_available  # noqa: E402

ROOT = HERE.parent
PEERS = HERE / "peers"
GATEWAY = "wsgateway"
REDIS_GATEWAY = "wsgateway-redis"
WORKERS_GATEWAY = "wsgateway-redis-w2"
#: wsgateway's limits raised so that admission control never refuses the generator.
GATEWAY_ENV = {
    "WSGATEWAY_CONNECTIONS_PER_MINUTE": "1000000",
    "WSGATEWAY_MAX_CONNECTIONS_PER_IP": "1000000",
    "WSGATEWAY_MAX_CONNECTIONS": "1000000",
    "WSGATEWAY_LOG_LEVEL": "WARNING",  # no access log line per publish: the peers log none
}
#: The channel every client subscribes on (/ws/ticker) and its modes (issue 9): since
#: issue 9 its default is `last`, so the suite sets the mode it measures, `stream` unless
#: --mode says otherwise (the fan-out of issue 3).
BENCH_CHANNEL = "ticker"
MODES = ("stream", "last", "book")
#: Other work on the machine (cores) above which --quiet-wait holds a measurement back.
QUIET_CORES = 0.25
MAX_OUTBOX_BYTES = 1_048_576  # wsgateway's default; the slow-consumer RSS bound is per client


@dataclass(frozen=True)
class Server:
    name: str
    # After the interpreter. Every server binds port 0 and prints the ports it got
    # (LISTENING, PUBLISHING): ports picked here and freed before the server binds them
    # can be taken by another process in between.
    argv: tuple[str, ...]
    needs: str | None = None  # a module that must be importable
    separate_publish: bool = False  # serves POST /api/publish on a port of its own
    env: tuple[tuple[str, str], ...] = ()
    redis: bool = False  # runs with broker = the suite's redis-server (--broker redis)

    @property
    def is_gateway(self) -> bool:
        """wsgateway itself (any broker or workers), not a peer: takes --mode and --set."""
        return self.argv[:2] == ("-m", "wsgateway")


SERVERS = {
    s.name: s
    for s in (
        Server(
            GATEWAY,
            ("-m", "wsgateway", "serve", "--port", "0"),
            env=tuple(GATEWAY_ENV.items()),
        ),
        Server("naive_aiohttp", (str(PEERS / "naive_aiohttp.py"), "--port", "0")),
        Server(
            "websockets",
            (
                str(PEERS / "websockets_broadcast.py"),
                "--port",
                "0",
                "--publish-port",
                "0",
            ),
            needs="websockets",
            separate_publish=True,
        ),
        Server(
            "picows",
            (
                str(PEERS / "picows_server.py"),
                "--port",
                "0",
                "--publish-port",
                "0",
            ),
            needs="picows",
            separate_publish=True,
        ),
        Server("bare_aiohttp", (str(PEERS / "bare_aiohttp.py"), "--port", "0")),
        # --broker redis / --workers 2: wsgateway on the suite's redis-server (issue 8)
        Server(
            REDIS_GATEWAY,
            ("-m", "wsgateway", "serve", "--port", "0"),
            env=tuple(GATEWAY_ENV.items()),
            redis=True,
        ),
        Server(
            WORKERS_GATEWAY,
            ("-m", "wsgateway", "serve", "--port", "0", "--workers", "2"),
            env=tuple(GATEWAY_ENV.items()),
            redis=True,
        ),
    )
}
#: Servers that speak the whole bench protocol; bare_aiohttp only holds connections.
FANOUT_SERVERS = (GATEWAY, "naive_aiohttp", "websockets", "picows", REDIS_GATEWAY, WORKERS_GATEWAY)
#: The peers wsgateway is compared with in issue 3's goals.
PEERS_FANOUT = ("naive_aiohttp", "websockets", "picows")
#: What runs unless --servers says otherwise (the redis ones: --broker redis, --workers 2).
DEFAULT_SERVERS = ("wsgateway", "naive_aiohttp", "websockets", "picows", "bare_aiohttp")
SCENARIOS = ("burst", "paced", "mix", "idle", "slow", "storm", "redis_work")
#: The scenarios run by default; redis_work is chosen by --broker redis.
DEFAULT_SCENARIOS = ("burst", "paced", "mix", "idle", "slow", "storm")


@dataclass(frozen=True)
class Case:
    """One measurement of the suite: a scenario at one size, for some servers."""

    scenario: str
    label: str
    args: tuple[str, ...]  # loadgen arguments
    servers: tuple[str, ...]
    fresh: bool  # needs a server process of its own (RSS figures)
    timeout: float

    @property
    def key(self) -> str:
        return f"{self.scenario}: {self.label}"


@dataclass
class Sizes:
    """Client counts and timings; --quick and --scale shrink them."""

    burst: tuple[int, ...] = (1000, 5000)
    paced_clients: int = 1000
    rates: tuple[int, ...] = (50, 200)
    mix_clients: int = 1000
    mix_topics: int = 100
    idle: tuple[int, ...] = (1000, 5000, 10000)
    slow_clients: int = 500
    storm: int = 2000
    warmup: float = 2.0
    duration: float = 5.0
    slow_warmup: float = 5.0  # slow clients need time to fill their kernel buffers
    settle: float = 1.0  # idle: seconds to let the server settle before reading RSS
    #: redis_work: subscribers of one topic, at one paced rate (the same for each count)
    redis_work: tuple[int, ...] = (100, 5000)
    redis_work_rate: int = 20  # 5,000 x 20 msg/s, one write per client each: any server keeps up


QUICK = Sizes(
    burst=(50,),
    paced_clients=50,
    rates=(50,),
    mix_clients=50,
    mix_topics=20,
    idle=(200,),
    slow_clients=50,
    storm=200,
    warmup=0.2,
    duration=0.4,
    slow_warmup=0.2,
    settle=0.2,
    redis_work=(10, 50),
)


def scaled(sizes: Sizes, factor: float) -> Sizes:
    def n(x: int) -> int:
        return max(10, round(x * factor))

    return Sizes(
        burst=tuple(n(x) for x in sizes.burst),
        paced_clients=n(sizes.paced_clients),
        rates=sizes.rates,
        mix_clients=n(sizes.mix_clients),
        mix_topics=sizes.mix_topics,
        idle=tuple(n(x) for x in sizes.idle),
        slow_clients=n(sizes.slow_clients),
        storm=n(sizes.storm),
        warmup=sizes.warmup,
        duration=sizes.duration,
        slow_warmup=sizes.slow_warmup,
        settle=sizes.settle,
        redis_work=tuple(n(x) for x in sizes.redis_work),
        redis_work_rate=sizes.redis_work_rate,
    )


def plan(sizes: Sizes, scenarios: Sequence[str], servers: Sequence[str]) -> list[Case]:
    """The measurements of one run, in order."""
    fanout = tuple(s for s in servers if s in FANOUT_SERVERS)
    timing = ("--warmup", str(sizes.warmup), "--duration", str(sizes.duration))

    def budget(clients: int, seconds: float) -> float:
        return 30.0 + clients / 200 + seconds * 2

    cases: list[Case] = []
    args: tuple[str, ...]
    if "burst" in scenarios:
        for n in sizes.burst:
            args = ("--scenario", "burst", "--clients", str(n), "--batch", "20", *timing)
            cases.append(Case("burst", f"{n} subscribers", args, fanout, False, budget(n, 9)))
    if "paced" in scenarios:
        n = sizes.paced_clients
        for rate in sizes.rates:
            args = ("--scenario", "paced", "--clients", str(n), "--rate", str(rate), *timing)
            cases.append(
                Case("paced", f"{n} subscribers, {rate} msg/s", args, fanout, False, budget(n, 9))
            )
    if "mix" in scenarios:
        n, topics = sizes.mix_clients, sizes.mix_topics
        args = (
            "--scenario", "burst", "--clients", str(n), "--topics", str(topics),
            "--subs-per-client", "5", "--zipf", "1.0", "--batch", "20", *timing,
        )  # fmt: skip
        label = f"{n} clients x 5 of {topics} topics, Zipf 1.0"
        cases.append(Case("mix", label, args, fanout, False, budget(n, 9)))
    if "storm" in scenarios:
        n = sizes.storm
        args = ("--scenario", "storm", "--clients", str(n), "--concurrency", "64")
        cases.append(Case("storm", f"{n} handshakes", args, fanout, False, budget(n * 5, 0)))
    if "idle" in scenarios:
        idle_servers = (*fanout, "bare_aiohttp") if "bare_aiohttp" in servers else fanout
        for n in sizes.idle:
            args = ("--scenario", "idle", "--clients", str(n), "--duration", str(sizes.settle))
            cases.append(Case("idle", f"{n} connections", args, idle_servers, True, budget(n, 3)))
    if "slow" in scenarios:
        # Fewer clients than elsewhere: each one's share of the feed must be large enough
        # for a stopped reader's backlog to reach the server within seconds.
        n = sizes.slow_clients
        for fraction in (0.0, 0.1):
            args = (
                "--scenario", "burst", "--clients", str(n), "--slow-fraction", str(fraction),
                "--warmup", str(sizes.slow_warmup), "--duration", str(sizes.duration),
            )  # fmt: skip
            label = f"{n} clients, {fraction:.0%} not reading"
            cases.append(Case("slow", label, args, fanout, True, budget(n, 12)))
    if "redis_work" in scenarios:
        # Redis's work per message must not grow with the subscribers: the same publish
        # rate to one topic, few and many subscribers, only the servers on Redis.
        on_redis = tuple(s for s in fanout if SERVERS[s].redis)
        rate = sizes.redis_work_rate
        for n in sizes.redis_work:
            args = ("--scenario", "paced", "--clients", str(n), "--rate", str(rate), *timing)
            label = f"{n} subscribers, {rate} msg/s"
            cases.append(Case("redis_work", label, args, on_redis, False, budget(n, 9)))
    return cases


# -- process figures (psutil, or /proc without it) ------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``, all its threads."""
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle, since boot."""
    if psutil is not None:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def memory_gib() -> float:
    if psutil is not None:
        return round(float(psutil.virtual_memory().total) / 2**30, 1)
    kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    return round(kib / 2**20, 1)


# -- processes --------------------------------------------------------------------------------


def cores() -> tuple[int, int]:
    """(server core, generator core): two different ones when the machine has two."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[1 if len(available) > 1 else 0]


def raise_file_limit() -> None:
    # Inherited by the servers we start: wsgateway itself does not raise it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Running:
    server: Server
    process: subprocess.Popen[bytes]
    port: int
    publish_port: int
    log: Path
    redis_port: int | None = None
    #: the processes besides ``process`` that serve (the workers of ``--workers N``)
    workers: tuple[int, ...] = ()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{BENCH_CHANNEL}"

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.publish_port}/api/publish"


#: The lines a server prints once it accepts connections (wsgateway's own line has
#: ``http://``), and, for peers serving POST /api/publish on a port of its own, that port
#: (the peers print both with ``bench_protocol.announce``).
LISTENING = re.compile(r"listening on (?:http://)?127\.0\.0\.1:(\d+)")
PUBLISHING = re.compile(r"^publish on 127\.0\.0\.1:(\d+)$", re.MULTILINE)


def announced_ports(
    process: subprocess.Popen[bytes], log: Path, separate_publish: bool
) -> tuple[int, int]:
    """(port, publish port) as the server printed them, waiting up to 20 s."""
    deadline = time.monotonic() + 20.0
    while True:
        text = log.read_text(errors="replace")
        listening, publishing = LISTENING.search(text), PUBLISHING.search(text)
        if listening and (publishing or not separate_publish):
            port = int(listening.group(1))
            return port, int(publishing.group(1)) if publishing else port
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{text[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not say where it listens within 20 s:\n{text[-2000:]}")
        time.sleep(0.02)


def child_pids(pid: int) -> tuple[int, ...]:
    """The processes whose parent is ``pid`` (from /proc: no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return tuple(sorted(found))


@contextlib.contextmanager
def running(
    server: Server, core: int, logs: Path, redis: RedisProcess | None = None
) -> Iterator[Running]:
    argv = [sys.executable, *server.argv]
    if server.redis:
        if redis is None:
            raise RuntimeError("needs --broker redis (a redis-server)")
        argv += ["--broker", redis.url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATEWAY_")}
    env.update(server.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    fd, name = tempfile.mkstemp(prefix=f"{server.name}-", suffix=".log", dir=logs)
    log = Path(name)
    with os.fdopen(fd, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            # Pinned before it runs a line: no thread of the server ever lands on the
            # generator's core.
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )
    try:
        port, publish_port = announced_ports(process, log, server.separate_publish)
        yield Running(
            server,
            process,
            port,
            publish_port,
            log,
            redis_port=redis.port if server.redis and redis is not None else None,
            # ``serve --workers N`` announces the port once every worker listens
            workers=child_pids(process.pid),
        )
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    children = []
    if psutil is not None:  # none of our servers forks, but a stray child must not outlive us
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


def settle(pid: int, limit: float = 10.0) -> None:
    """Wait until the server is idle: a case must not pay for the previous one's teardown
    (thousands of sockets closing), or a handshake storm measures cleanup instead."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - before < 0.01:  # under 10% of a core for 100 ms
            return
        before = now


def background_cores(exclude: int, seconds: float = 0.5) -> float:
    """Cores busy with other work than ``exclude`` (the server) over ``seconds``."""
    machine_before, server_before = machine_busy_seconds(), cpu_seconds(exclude)
    time.sleep(seconds)
    machine = machine_busy_seconds() - machine_before
    return max(0.0, machine - (cpu_seconds(exclude) - server_before)) / seconds


def wait_quiet(pid: int, patience: float, say: Callable[[str], None]) -> None:
    """On a shared machine, wait up to ``patience`` seconds for other work to calm down."""
    deadline = time.monotonic() + patience
    while (busy := background_cores(pid)) > QUIET_CORES:
        if time.monotonic() >= deadline:
            say(f"   other processes keep {busy:.1f} cores busy; measuring anyway")
            return
        time.sleep(0.5)


def measure(case: Case, server: Running, core: int, scratch: Path) -> dict[str, Any]:
    """Run the generator once against ``server``; returns its result (or an error)."""
    out = scratch / "result.json"
    out.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "wsgateway.loadgen",
        "--url", server.url, "--publish-url", server.publish_url,
        "--server-pid", str(server.process.pid), "--cpu", str(core),
        "--label", server.server.name, "--json", str(out), *case.args,
    ]  # fmt: skip
    for pid in server.workers:
        argv += ["--also-pid", str(pid)]
    if server.redis_port is not None:
        argv += ["--redis-port", str(server.redis_port)]
    rss_start = rss_bytes(server.process.pid)
    started = time.monotonic()
    generator = subprocess.Popen(argv, stdout=subprocess.DEVNULL, cwd=ROOT)  # progress: stderr
    try:
        code = generator.wait(case.timeout)
    except subprocess.TimeoutExpired:
        generator.kill()
        generator.wait()
        return {"error": f"the generator did not finish within {case.timeout:.0f} s"}
    if code != 0 or not out.exists():
        return {"error": f"the generator exited with {code}"}
    result: dict[str, Any] = json.loads(out.read_text())
    result["server_rss_start_bytes"] = rss_start
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    if server.process.poll() is not None:
        result["error"] = f"the server exited with {server.process.returncode} during the run"
    elif not result.get("connected"):
        result["error"] = result.get("error") or "no client connected: " + "; ".join(
            result.get("errors_sample", [])
        )
    elif result.get("publish_errors"):
        result["error"] = f"{result['publish_errors']} publish request(s) failed"
    elif "delivered" in result and not result["delivered"]:
        result["error"] = "nothing was delivered in the measured window"
    return result


# -- the suite --------------------------------------------------------------------------------


@dataclass
class Suite:
    cases: list[Case]
    servers: list[str]
    runs: int
    share: bool = False  # reuse one server process for the cases that allow it
    quiet_wait: float = 0.0  # seconds to wait for other processes to go quiet
    redis: RedisProcess | None = None  # the redis-server of the servers on Redis
    gateway_args: tuple[str, ...] = ()  # appended to wsgateway's `serve` (--mode, --set)
    results: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def record(self, case: Case, server: str, result: dict[str, Any]) -> None:
        self.results.setdefault(case.key, {}).setdefault(server, []).append(result)

    def execute(self, logs: Path, scratch: Path, say: Callable[[str], None]) -> int:
        """Run everything; returns how many measurements failed."""
        server_core, generator_core = cores()
        failures = 0
        for run in range(1, self.runs + 1):
            for name in self.servers:
                server = SERVERS[name]
                if server.is_gateway:
                    server = replace(server, argv=server.argv + self.gateway_args)
                # A fresh server process for each case: one left busy with a bigger heap by
                # the case before measured about half the handshake rate. --quick shares one
                # process between the cases that read no RSS, to stay within seconds.
                mine = [c for c in self.cases if name in c.servers]
                shared = [c for c in mine if self.share and not c.fresh]
                groups = [shared] if shared else []
                groups += [[c] for c in mine if c not in shared]
                for group in groups:
                    try:
                        with running(server, server_core, logs, self.redis) as live:
                            for case in group:
                                settle(live.process.pid)
                                if self.quiet_wait:
                                    wait_quiet(live.process.pid, self.quiet_wait, say)
                                say(f"== run {run}/{self.runs}  {name}  {case.key}")
                                result = measure(case, live, generator_core, scratch)
                                failures += "error" in result
                                if "error" in result:
                                    say(f"!! {name} {case.key}: {result['error']}")
                                self.record(case, name, result)
                    except RuntimeError as exc:
                        say(f"!! {name} could not start: {exc}")
                        for case in group:
                            self.record(case, name, {"error": f"server did not start: {exc}"})
                            failures += 1
        return failures


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every numeric figure over the runs that completed; flags kept as counts."""
    good = [r for r in runs if "error" not in r]
    flat = [flatten(r) for r in good]
    keys = sorted({k for f in flat for k, v in f.items() if isinstance(v, int | float)})
    summary: dict[str, Any] = {}
    for key in keys:
        values = [f[key] for f in flat if isinstance(f.get(key), int | float)]
        if values and not isinstance(values[0], bool):
            summary[key] = statistics.median(values)
    summary["runs"] = len(runs)
    summary["failed_runs"] = len(runs) - len(good)
    summary["saturated_runs"] = sum(bool(r.get("generator_saturated")) for r in good)
    codes: dict[str, int] = {}
    for r in good:
        for code, count in r.get("close_codes", {}).items():
            codes[code] = codes.get(code, 0) + count
    summary["close_codes"] = codes
    return summary


def flatten(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict) and key != "close_codes":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def add_slow_growth(suite: Suite, medians: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Slow consumers: each server's peak RSS over its own peak in the run without them."""
    slow = [c for c in suite.cases if c.scenario == "slow"]
    if len(slow) != 2:
        return
    base, with_slow = (medians.get(c.key, {}) for c in slow)
    for server, m in with_slow.items():
        before = base.get(server, {}).get("server_rss_peak_bytes")
        if before is not None and "server_rss_peak_bytes" in m:
            m["rss_growth_bytes"] = m["server_rss_peak_bytes"] - before
            if m.get("slow_clients"):
                m["rss_growth_per_slow_client_bytes"] = m["rss_growth_bytes"] / m["slow_clients"]


# -- reporting --------------------------------------------------------------------------------


def fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{value:.0%}"
    if kind == "kib":
        return f"{value / 1024:,.1f}"
    if kind == "mib":
        return f"{value / 2**20:,.1f}"
    if kind == "ratio":
        return f"{value:.2f}x"
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


#: The figures each scenario's table shows: (column title, key in the medians, format).
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "burst": [
        ("deliveries/s", "deliveries_per_s", "int"),
        ("server µs/delivery", "server_cpu_us_per_delivery", ""),
        ("server CPU", "server_cpu", "pct"),
        ("p50 ms", "latency_ms.p50", ""),
        ("p99 ms", "latency_ms.p99", ""),
    ],
    "paced": [
        ("p50 ms", "latency_ms.p50", ""),
        ("p99 ms", "latency_ms.p99", ""),
        ("max ms", "latency_ms.max", ""),
        ("server µs/delivery", "server_cpu_us_per_delivery", ""),
        ("deliveries/s", "deliveries_per_s", "int"),
    ],
    "idle": [
        ("RSS/connection KiB", "rss_per_connection_bytes", "kib"),
        ("server RSS MiB", "server_rss_bytes", "mib"),
        ("connect s", "connect_seconds", ""),
    ],
    "slow": [
        ("fast deliveries/s", "deliveries_per_s", "int"),
        ("p99 ms", "latency_ms.p99", ""),
        ("server RSS peak MiB", "server_rss_peak_bytes", "mib"),
        ("RSS over no-slow run MiB", "rss_growth_bytes", "mib"),
        ("per slow client KiB", "rss_growth_per_slow_client_bytes", "kib"),
        ("server µs/delivery", "server_cpu_us_per_delivery", ""),
    ],
    "storm": [
        ("handshakes/s", "handshakes_per_s", "int"),
        ("server µs/handshake", "server_cpu_us_per_handshake", "int"),
    ],
}
COLUMNS["mix"] = COLUMNS["burst"]
COLUMNS["redis_work"] = [
    # (Redis 7 counts the commands a script runs in total_commands_processed too, so
    # commands_per_s, in the JSON, equals calls_per_s)
    ("redis commands/s", "redis.calls_per_s", "int"),
    ("published msg/s", "publish_rate", ""),
    ("redis commands/msg", "redis.calls_per_message", ""),
    ("redis µs/msg", "redis.cpu_us_per_message", ""),
    ("deliveries/s", "deliveries_per_s", "int"),
    ("p99 ms", "latency_ms.p99", ""),
]
#: Shown besides a scenario's own columns when a server of the table ran on Redis: what
#: Redis did per published message in the measured window (its calls count those the
#: publish script makes), and its CPU.
REDIS_COLUMNS = [
    ("redis commands/msg", "redis.calls_per_message", ""),
    ("redis µs/msg", "redis.cpu_us_per_message", ""),
]
#: The figure compared across servers in each scenario, and whether higher is better.
HEADLINE = {
    "burst": ("deliveries_per_s", True),
    "paced": ("server_cpu_us_per_delivery", False),
    "mix": ("deliveries_per_s", True),
    "idle": ("rss_per_connection_bytes", False),
    "slow": ("deliveries_per_s", True),
    "storm": ("handshakes_per_s", True),
    "redis_work": ("redis.calls_per_message", False),
}


def tables(suite: Suite, medians: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines: list[str] = []
    for case in suite.cases:
        per_server = medians.get(case.key, {})
        if not per_server:
            continue
        columns = COLUMNS[case.scenario]
        if case.scenario != "redis_work" and any(
            "redis.calls_per_message" in m for m in per_server.values()
        ):
            columns = columns + REDIS_COLUMNS
        headline, higher = HEADLINE[case.scenario]
        ours = per_server.get(GATEWAY, {}).get(headline)
        lines += [
            f"### {case.key}",
            "",
            "| server | "
            + " | ".join(c[0] for c in columns)
            + f" | wsgateway vs this ({headline}) | gen CPU | notes |",
            "|---" * (len(columns) + 4) + "|",
        ]
        for server, m in per_server.items():
            theirs = m.get(headline)
            ratio = None
            if ours and theirs:
                ratio = ours / theirs if higher else theirs / ours
            notes = []
            if m["failed_runs"]:
                notes.append(f"{m['failed_runs']} failed")
            if m["saturated_runs"]:
                notes.append(f"generator saturated in {m['saturated_runs']}")
            if m.get("stalls"):
                notes.append(f"stalls {m['stalls']:.0f}")
            if m.get("skipped_ticks"):
                notes.append(f"publisher skipped {m['skipped_ticks']:.0f}")
            if m.get("background_cpu", 0) > 0.2:
                notes.append(f"background CPU {m['background_cpu']:.0%}")
            if m["close_codes"]:
                notes.append("closed " + ", ".join(f"{k}x{v}" for k, v in m["close_codes"].items()))
            cells = [fmt(m.get(key), kind) for _, key, kind in columns]
            lines.append(
                f"| {server} | "
                + " | ".join(cells)
                + f" | {fmt(ratio, 'ratio') if server != GATEWAY else '-'}"
                + f" | {fmt(m.get('generator_cpu'), 'pct')} | {'; '.join(notes)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def goals(suite: Suite, medians: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The issue's numbers to beat, checked against this run's medians."""

    def get(scenario: str, server: str, key: str, label: str | None = None) -> Any:
        for case in suite.cases:
            if case.scenario == scenario and (label is None or label in case.label):
                value = medians.get(case.key, {}).get(server, {}).get(key)
                if value is not None:
                    return value
        return None

    rows: list[tuple[str, str, str]] = []

    def check(goal: str, measured: str, ok: bool | None) -> None:
        rows.append((goal, measured, "-" if ok is None else ("met" if ok else "NOT met")))

    burst_cases = [c for c in suite.cases if c.scenario == "burst"]
    for case in burst_cases:
        ours = medians.get(case.key, {}).get(GATEWAY, {}).get("deliveries_per_s")
        naive = medians.get(case.key, {}).get("naive_aiohttp", {}).get("deliveries_per_s")
        ratio = ours / naive if ours and naive else None
        check(
            f"burst {case.label}: >= 1,000,000 deliveries/s and >= 15x naive",
            f"{fmt(ours, 'int')}/s, {fmt(ratio, 'ratio')} naive",
            None if ours is None else ours >= 1e6 and (ratio is None or ratio >= 15),
        )
    paced = [c for c in suite.cases if c.scenario == "paced"]
    if paced:
        label = paced[0].label
        ours = get("paced", GATEWAY, "server_cpu_us_per_delivery", label)
        peers = {p: get("paced", p, "server_cpu_us_per_delivery", label) for p in PEERS_FANOUT}
        shown = ", ".join(f"{p} {fmt(v)}" for p, v in peers.items() if v is not None)
        ok = None
        if ours is not None:
            ok = all(v is None or ours < v for v in peers.values())
            naive = peers.get("naive_aiohttp")
            ok = ok and (naive is None or ours <= naive / 2)
        check(
            f"CPU per delivery, paced {label}: <= 1/2 naive, below websockets and picows",
            f"{fmt(ours)} µs vs {shown}",
            ok,
        )
        p99 = get("paced", GATEWAY, "latency_ms.p99", label)
        check(
            f"p99 latency, paced {label}: <= 5 ms",
            f"{fmt(p99)} ms",
            None if p99 is None else p99 <= 5,
        )
    idle = [c for c in suite.cases if c.scenario == "idle"]
    if idle:
        largest = idle[-1].label
        ours = get("idle", GATEWAY, "rss_per_connection_bytes", largest)
        bare = get("idle", "bare_aiohttp", "rss_per_connection_bytes", largest)
        check(
            f"RSS per idle connection at {largest}: <= bare aiohttp + 2 KiB",
            f"{fmt(ours, 'kib')} KiB vs bare {fmt(bare, 'kib')} KiB",
            None if ours is None or bare is None else ours <= bare + 2048,
        )
    slow = [c for c in suite.cases if c.scenario == "slow"]
    if len(slow) == 2:
        base, with_slow = (medians.get(c.key, {}).get(GATEWAY, {}) for c in slow)
        slow_count = with_slow.get("slow_clients") or 0
        growth = with_slow.get("rss_growth_bytes", 0)
        bound = 1.1 * MAX_OUTBOX_BYTES * slow_count
        rate = (with_slow.get("deliveries_per_s") or 0) / (base.get("deliveries_per_s") or 1)
        p99_base, p99_slow = base.get("latency_ms.p99"), with_slow.get("latency_ms.p99")
        check(
            "slow consumers: server RSS within max_outbox_bytes per slow client (+10%)",
            f"+{fmt(growth, 'mib')} MiB for {slow_count:.0f} slow (bound {fmt(bound, 'mib')} MiB)",
            growth <= bound if base and with_slow else None,
        )
        check(
            "slow consumers: fast clients keep >= 90% of their rate and p99",
            f"rate {rate:.0%} of the run without; p99 {fmt(p99_slow)} vs {fmt(p99_base)} ms",
            (
                rate >= 0.9
                and p99_slow is not None
                and p99_base is not None
                and p99_slow <= p99_base / 0.9
            )
            if base and with_slow
            else None,
        )
    check(
        "metrics overhead <= 3% of server CPU", "not measured by this suite (needs a profile)", None
    )
    lines = ["### Goals (issue 3)", "", "| goal | measured (medians) | |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {s} |" for g, m, s in rows]
    return "\n".join(lines) + "\n" + redis_goals(suite, medians)


def redis_goals(suite: Suite, medians: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Issue 8's numbers: wsgateway on Redis beside itself on the memory broker, in this run."""
    rows: list[tuple[str, str, str]] = []

    def figure(case: Case, server: str, key: str) -> Any:
        return medians.get(case.key, {}).get(server, {}).get(key)

    for case in suite.cases:
        if case.scenario == "burst":
            memory = figure(case, GATEWAY, "deliveries_per_s")
            redis = figure(case, REDIS_GATEWAY, "deliveries_per_s")
            if memory and redis:
                ratio = redis / memory
                rows.append(
                    (
                        f"burst {case.label}: Redis >= 70% of memory's deliveries/s",
                        f"{fmt(redis, 'int')} vs {fmt(memory, 'int')}/s: {ratio:.0%}",
                        "met" if ratio >= 0.7 else "NOT met",
                    )
                )
        if case.scenario == "paced":
            memory = figure(case, GATEWAY, "latency_ms.p99")
            redis = figure(case, REDIS_GATEWAY, "latency_ms.p99")
            if memory is not None and redis is not None:
                rows.append(
                    (
                        f"paced {case.label}: p99 on Redis <= memory's + 2 ms",
                        f"{fmt(redis)} vs {fmt(memory)} ms: {redis - memory:+.2f} ms",
                        "met" if redis - memory <= 2 else "NOT met",
                    )
                )
        if case.scenario == "mix":
            one = figure(case, REDIS_GATEWAY, "deliveries_per_s")
            two = figure(case, WORKERS_GATEWAY, "deliveries_per_s")
            if one and two:
                cpu_one = figure(case, REDIS_GATEWAY, "server_cpu_us_per_delivery")
                cpu_two = figure(case, WORKERS_GATEWAY, "server_cpu_us_per_delivery")
                rows.append(
                    (
                        f"mix {case.label}: --workers 2 over one process (both on Redis)",
                        f"{fmt(two, 'int')} vs {fmt(one, 'int')}/s: {two / one:.2f}x; "
                        f"server µs/delivery {fmt(cpu_two)} vs {fmt(cpu_one)}",
                        "-",
                    )
                )
    work = [c for c in suite.cases if c.scenario == "redis_work"]
    if len(work) >= 2:
        for server in (REDIS_GATEWAY, WORKERS_GATEWAY):
            few, many = (figure(c, server, "redis.calls_per_message") for c in (work[0], work[-1]))
            rate_few, rate_many = (
                figure(c, server, "redis.calls_per_s") for c in (work[0], work[-1])
            )
            if few and many:
                rows.append(
                    (
                        f"{server}: Redis work per message independent of subscribers "
                        f"({work[0].label.split(',')[0]} vs {work[-1].label.split(',')[0]})",
                        f"{few:.2f} vs {many:.2f} commands/msg ({fmt(rate_few, 'int')} vs "
                        f"{fmt(rate_many, 'int')} commands/s)",
                        "met" if many <= few * 1.1 else "NOT met",
                    )
                )
    if not rows:
        return ""
    lines = ["", "### Goals (issue 8)", "", "| goal | measured (medians) | |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {s} |" for g, m, s in rows]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in ("wsgateway", "aiohttp", "uvloop", "orjson", "websockets", "picows"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, one run")
    parser.add_argument("--runs", type=int, help="repeats of each measurement (default 3)")
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated, from {SCENARIOS} (default: all but redis_work, which "
        "--broker redis adds)",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated, from {tuple(SERVERS)}; bare_aiohttp runs only the idle case "
        f"(default: {', '.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument(
        "--broker",
        choices=("memory", "redis"),
        default="memory",
        help="redis: also run wsgateway on a redis-server this script starts on 127.0.0.1 "
        f"({REDIS_GATEWAY}), beside wsgateway on the memory broker",
    )
    parser.add_argument(
        "--redis-core",
        choices=("generator", "server"),
        default="generator",
        help="the core redis-server is pinned to (default: the generator's, so that the "
        "server's core stays its own)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=1,
        help=f"2: also run `serve --workers 2` on Redis ({WORKERS_GATEWAY}); needs --broker redis",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="stream",
        help="wsgateway's mode for the bench channel (ticker), as `--set "
        "channel.ticker.mode=MODE` (issue 9); the peers ignore it. book: the generator "
        "publishes book deltas (--payload book), to every server (the peers relay them as "
        "any JSON)",
    )
    parser.add_argument(
        "--set",
        dest="gateway_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to wsgateway's `serve --set` (not the peers'), e.g. "
        "channel.ticker.checksum=false; repeatable",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every client count")
    parser.add_argument("--duration", type=float, help="seconds measured per case")
    parser.add_argument("--warmup", type=float, help="seconds before measuring")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="on a shared machine, wait up to this many seconds before each measurement "
        "for other processes to use less than a quarter of a core",
    )
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)

    if args.workers > 1 and args.broker != "redis":
        parser.error("--workers 2 needs --broker redis (workers share messages through it)")
    default_scenarios = DEFAULT_SCENARIOS + (("redis_work",) if args.broker == "redis" else ())
    scenarios = [s for s in (args.scenarios or ",".join(default_scenarios)).split(",") if s]
    server_names = [s for s in (args.servers or ",".join(DEFAULT_SERVERS)).split(",") if s]
    if args.broker == "redis" and REDIS_GATEWAY not in server_names:
        server_names.insert(server_names.index(GATEWAY) + 1 if GATEWAY in server_names else 0,
                            REDIS_GATEWAY)  # fmt: skip
    if args.workers > 1 and WORKERS_GATEWAY not in server_names:
        server_names.insert(server_names.index(REDIS_GATEWAY) + 1, WORKERS_GATEWAY)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    unknown += [s for s in server_names if s not in SERVERS]
    if unknown:
        parser.error(f"unknown scenario or server: {', '.join(unknown)}")
    sizes = QUICK if args.quick else Sizes()
    if args.scale != 1.0:
        sizes = scaled(sizes, args.scale)
    if args.duration is not None:
        sizes.duration = args.duration
    if args.warmup is not None:
        sizes.warmup = sizes.slow_warmup = args.warmup
    runs = args.runs or (1 if args.quick else 3)

    skipped: dict[str, str] = {}
    servers = []
    for name in server_names:
        needs = SERVERS[name].needs
        if needs and importlib.util.find_spec(needs) is None:
            skipped[name] = f"{needs} is not installed (pip install -e '.[bench]')"
        elif SERVERS[name].redis and not redis_available():
            skipped[name] = "redis-server is not installed"
        else:
            servers.append(name)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    for name, why in skipped.items():
        say(f"!! skipping {name}: {why}")
    raise_file_limit()
    cases = plan(sizes, scenarios, servers)
    if args.mode == "book":  # a book channel refuses any data but a book message
        cases = [replace(c, args=(*c.args, "--payload", "book")) for c in cases]
    suite = Suite(cases, servers, runs, args.quick, args.quiet_wait)
    sets = [f"channel.{BENCH_CHANNEL}.mode={args.mode}", *args.gateway_set]
    suite.gateway_args = tuple(arg for key in sets for arg in ("--set", key))
    started = time.monotonic()
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "runs": runs,
        "quick": args.quick,
        "mode": args.mode,
        "gateway_set": args.gateway_set,
        "sizes": sizes.__dict__,
        "skipped_servers": skipped,
        "pinning": dict(zip(("server_core", "generator_core"), cores(), strict=True)),
    }
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgateway-bench-")))
        if any(SERVERS[name].redis for name in servers):
            # On the generator's core: the server's core stays the server's alone (Redis
            # spends ~10 µs per published message, a few % of a core in these scenarios).
            core = cores()[1 if args.redis_core == "generator" else 0]
            suite.redis = stack.enter_context(redis_server(core=core))
            meta["redis"] = {"url": suite.redis.url, "core": core}
        failures = suite.execute(logs, logs, say)
    meta["seconds"] = round(time.monotonic() - started, 1)

    medians = {
        key: {server: median_of(runs) for server, runs in per_server.items()}
        for key, per_server in suite.results.items()
    }
    add_slow_growth(suite, medians)
    report = (
        f"## wsgateway fan-out benchmarks, {meta['date']}\n\n"
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores; Python "
        f"{meta['machine']['python']}; medians of {runs} run(s); wsgateway's "
        f"{BENCH_CHANNEL} in mode {args.mode}; `{meta['command']}` "
        f"took {meta['seconds']:.0f} s. Ratios above 1 favour wsgateway.\n\n"
        + tables(suite, medians)
        + goals(suite, medians)
    )
    print(report)
    path = args.json or HERE / "results" / ("quick.json" if args.quick else "latest.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": meta,
        "cases": [c.__dict__ | {"key": c.key} for c in suite.cases],
        "medians": medians,
        "runs": suite.results,
    }
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(report)
    say(f"results: {path}; {failures} measurement(s) failed; {meta['seconds']:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
