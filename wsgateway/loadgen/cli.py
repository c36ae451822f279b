"""The command line: options, the run's settings from them, and ``main``."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from . import __doc__ as overview
from .config import PAYLOADS, SCENARIOS, Config
from .scenario import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wsgateway.loadgen", description=overview.split("\n")[0]
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
    p.add_argument(
        "--payload",
        choices=PAYLOADS,
        default="json",
        help='json: {"t": stamp, "pad": ...}; book: a one-level-per-side book delta for a '
        "channel in mode book, the stamp as the ask's quantity (--pad unused)",
    )
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
    p.add_argument(
        "--also-pid",
        type=int,
        action="append",
        default=[],
        help="another process of the server (a worker), counted with --server-pid; repeatable",
    )
    p.add_argument(
        "--redis-port",
        type=int,
        help="report the work of the gateway's redis-server on 127.0.0.1:PORT (INFO)",
    )
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
        **{name: getattr(args, name) for name in names if name != "also_pids"},
        also_pids=tuple(args.also_pid),
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


def run_once(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the options, run, print the result as the last line of stdout; the result."""
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
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wsgateway.loadgen``: exit 0 whenever a result was printed, valid or not
    (benchmarks/run.py reads ``valid`` itself); ``wsgateway bench`` exits 1 on an invalid one."""
    run_once(argv)
    return 0
