"""The ``wsgateway`` command. The only place where errors become exit codes.

Exit codes: 0 success, 1 a failure at run time (server unreachable, request refused),
2 a bad setting or bad usage (one line naming it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from . import __version__
from .app import create_app, metrics_address
from .auth import is_loopback_host
from .cluster import node_address
from .errors import GatewayError, SettingsError
from .gateway import Gateway
from .listener import raise_open_files_limit
from .settings import Settings, load_settings
from .siblings import WorkerRole
from .web import GATEWAY, AccessLogger
from .workers import Supervisor

log = logging.getLogger("wsgateway")

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandFailed(GatewayError):
    """A client command could not do its job; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgateway", description="Real-time WebSocket gateway for market data."
    )
    parser.add_argument("--version", action="version", version=f"wsgateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8080; 0 picks a free one)")
    serve.add_argument("--config", help="TOML settings file (or WSGATEWAY_CONFIG)")
    serve.add_argument("--broker", help="broker URL (default memory://)")
    serve.add_argument(
        "--workers",
        help="processes sharing the port (default 1); more than 1 needs a redis:// broker",
    )
    serve.add_argument(
        "--demo", action="store_true", default=None, help="publish a synthetic market feed"
    )

    publish = commands.add_parser("publish", help="publish one message over the HTTP API")
    publish.add_argument("channel")
    publish.add_argument("topic")
    publish.add_argument("data", help="the message data, as JSON")
    publish.add_argument("--url", default=DEFAULT_URL)
    publish.add_argument(
        "--token",
        default=os.environ.get("WSGATEWAY_PUBLISH_TOKEN"),
        help="publish token (default: $WSGATEWAY_PUBLISH_TOKEN)",
    )

    subscribe = commands.add_parser("subscribe", help="print received messages as JSON lines")
    subscribe.add_argument("channel")
    subscribe.add_argument("topics", nargs="+", metavar="TOPIC")
    subscribe.add_argument("--url", default=DEFAULT_URL)
    subscribe.add_argument("--token", help="JWT for private channels (user)")
    subscribe.add_argument(
        "--count",
        type=int,
        default=0,
        help="exit after this many updates (default: run until interrupted)",
    )

    metrics = commands.add_parser("metrics", help="show the gateway's metrics")
    metrics.add_argument("--url", default=DEFAULT_URL)
    metrics.add_argument("--json", action="store_true", help="print the raw JSON view")

    bench = commands.add_parser(
        "bench",
        add_help=False,  # --help goes to the load generator, which owns every option
        help="load-test a running gateway (N clients, a publisher); --help for options",
    )
    bench.add_argument("loadgen_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Every option, --help included, belongs to the load generator.
        from .loadgen import main as run_load

        return run_load(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "publish":
            return asyncio.run(publish(args))
        if args.command == "subscribe":
            return asyncio.run(subscribe(args))
        return asyncio.run(show_metrics(args))
    except SettingsError as exc:
        print(f"wsgateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"wsgateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


# -- serve ----------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    config = args.config or os.environ.get("WSGATEWAY_CONFIG")
    settings = load_settings(
        env=os.environ,
        config_file=config,
        flags={
            "host": args.host,
            "port": args.port,
            "broker": args.broker,
            "demo": args.demo,
            "workers": args.workers,
        },
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Every client is a descriptor: the usual soft limit of 1,024 is an outage waiting.
    logging.getLogger("wsgateway").info("open files limit: %s", raise_open_files_limit())
    if settings.workers > 1:
        return Supervisor(settings, _run_worker).run()
    return _run(settings)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows); asyncio's loop works too
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _run_worker(settings: Settings, role: WorkerRole, listening: Callable[[], None]) -> int:
    """One worker of ``serve --workers N`` (workers.py runs it in a forked process)."""
    return _run(settings, worker=role, listening=listening)


def _run(
    settings: Settings,
    *,
    worker: WorkerRole | None = None,
    listening: Callable[[], None] | None = None,
) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            return runner.run(_serve(settings, worker=worker, listening=listening))
        except OSError as exc:
            print(
                f"wsgateway: cannot listen on {settings.host}:{settings.port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE


#: The cyclic collector's thresholds for a process holding many long-lived objects per
#: connection. A full collection re-walks every live connection; at the default third
#: threshold (10) a connection storm spent a third of the server's CPU in the collector
#: (py-spy), most of it in full collections.
#: Running one full collection where the default runs ten took handshakes/s up 12% (2,000
#: connections) to 30% (8,000) and paced CPU down 3%; young collections stay as frequent
#: as ever, so cyclic garbage is still freed soon (benchmarks/README.md). A closed
#: connection leaves no reference cycle behind (listener.py, web._drop_tracebacks), so rare
#: full collections hold no connection's memory: benchmarks/churn.py.
GC_THRESHOLDS = (700, 10, 100)


def tune_gc() -> None:
    """Run full collections less often, and leave what start-up made (modules, the app)
    out of every collection. Only ``wsgateway serve`` does this: an application that
    embeds the gateway keeps its own collector settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def warn_about_exposed_loopback_rule(settings: Settings) -> bool:
    """Log a warning when publishing relies on the loopback rule but the gateway listens
    beyond loopback; True when it did."""
    if settings.publish_token is not None or is_loopback_host(settings.host):
        return False
    log.warning(
        "no publish_token is set and the gateway listens on %s: publishing is open to every "
        "process on this host, and to every client of a reverse proxy on this host that is "
        "not in trusted_proxies; set publish_token (README, Deployment checklist)",
        settings.host,
    )
    return True


async def _serve(
    settings: Settings,
    *,
    worker: WorkerRole | None = None,
    listening: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. ``worker``: as one of ``--workers N``, sharing the port
    (SO_REUSEPORT) and telling the supervisor through ``listening``, which speaks for all."""
    app = create_app(settings, worker=worker)
    if worker is None or worker.index == 0:
        warn_about_exposed_loopback_rule(settings)
    tune_gc()
    runner = web.AppRunner(
        app, handle_signals=False, access_log_class=AccessLogger, shutdown_timeout=10.0
    )
    gateway = app[GATEWAY]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    drain = _DrainSignals(gateway, supervisor=worker is not None)
    loop.add_signal_handler(signal.SIGTERM, drain.on_sigterm)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=worker is not None)
        await site.start()
        port = _bound_port(runner) or settings.port
        if gateway.cluster is not None:
            gateway.cluster.listening_on(node_address(settings.host, port))
        channels = ", ".join(gateway.channels)
        metrics = metrics_address(app)
        if listening is not None:
            listening()  # the supervisor announces the node once every worker listens
        else:
            print(
                f"wsgateway listening on http://{settings.host}:{port} "
                f"(channels: {channels}; broker {settings.broker}"
                f"{'; demo feed on' if settings.demo else ''}"
                f"{f'; metrics on http://{metrics[0]}:{metrics[1]}' if metrics else ''})",
                flush=True,
            )
        # SIGINT stops at once; SIGTERM and POST /api/drain drain first, then stop.
        stopped = asyncio.ensure_future(stop.wait())
        drained = asyncio.ensure_future(gateway.drained.wait())
        try:
            await asyncio.wait((stopped, drained), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            drained.cancel()
        if worker is None:
            if stop.is_set():
                print("wsgateway shutting down: closing clients with 1001", flush=True)
            else:
                print("wsgateway drained: shutting down", flush=True)
    finally:
        await runner.cleanup()
    if worker is None:
        print("wsgateway stopped", flush=True)
    return EXIT_OK


class _DrainSignals:
    """SIGTERM drains the node (Gateway.drain); a second one closes the rest at once.

    As one of ``--workers N`` (``supervisor``), a drain that ``POST /api/drain`` started
    here concerns the whole node, not this worker alone (the supervisor would restart a
    worker that exits by itself): this worker sends SIGTERM to the supervisor, which
    forwards it to every worker, this one included, which then joins the drain under way.
    """

    def __init__(self, gateway: Gateway, *, supervisor: bool) -> None:
        self.gateway = gateway
        self.sigterms = 0
        if supervisor:
            gateway.on_drain = self.tell_supervisor

    def on_sigterm(self) -> None:
        self.sigterms += 1
        if self.sigterms == 1:
            self.gateway.drain()  # joins a drain that POST /api/drain started
        else:
            log.info("SIGTERM again: closing the remaining clients now")
            self.gateway.hurry_drain()

    def tell_supervisor(self) -> None:
        if self.sigterms == 0:  # not the supervisor's own SIGTERM: the API started it
            os.kill(os.getppid(), signal.SIGTERM)


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


# -- client commands ------------------------------------------------------------------------


async def publish(args: argparse.Namespace) -> int:
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError:
        raise SettingsError("data", args.data, "expected JSON, e.g. '{\"price\": 1.5}'") from None
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    body = {"channel": args.channel, "topic": args.topic, "data": data}
    answer = await _request("POST", f"{args.url}/api/publish", json=body, headers=headers)
    print(orjson.dumps(answer).decode())
    return EXIT_OK


async def subscribe(args: argparse.Namespace) -> int:
    url = f"{_ws_url(args.url)}/ws/{args.channel}"
    params = {"token": args.token} if args.token else None
    updates = 0
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, params=params)
        except aiohttp.WSServerHandshakeError as exc:
            raise CommandFailed(f"{url} refused the connection: HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
            raise CommandFailed(f"cannot reach {url}: {exc}") from None
        async with ws:
            await ws.send_str(
                orjson.dumps({"type": "subscribe", "topics": args.topics, "id": 1}).decode()
            )
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                print(message.data, flush=True)
                if orjson.loads(message.data).get("type") == "update":
                    updates += 1
                    if args.count and updates >= args.count:
                        return EXIT_OK
            if ws.close_code not in (None, 1000):
                raise CommandFailed(f"the gateway closed the connection with {ws.close_code}")
    return EXIT_OK


async def show_metrics(args: argparse.Namespace) -> int:
    view = await _request("GET", f"{args.url}/api/ws/metrics")
    print(
        orjson.dumps(view, option=orjson.OPT_INDENT_2).decode()
        if args.json
        else format_metrics(view)
    )
    return EXIT_OK


async def _request(method: str, url: str, **kwargs: Any) -> Any:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, **kwargs) as response,
        ):
            text = await response.text()
    except aiohttp.ClientError as exc:
        raise CommandFailed(f"cannot reach {url}: {exc}") from None
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        answer = None
    if response.status != 200 or answer is None:
        detail = answer.get("message", text) if isinstance(answer, dict) else text[:200]
        field = f" ({answer['field']})" if isinstance(answer, dict) and "field" in answer else ""
        raise CommandFailed(f"{method} {url} answered {response.status}{field}: {detail}")
    return answer


def _ws_url(url: str) -> str:
    return "ws" + url[4:] if url.startswith("http") else url


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def format_metrics(view: dict[str, Any]) -> str:
    """The metrics view as a table for a terminal."""
    rate = view["overall_success_rate"]
    lines = [
        f"uptime {view['uptime_seconds']:.0f}s   active connections "
        f"{view['total_active_connections']}   sent {view['total_messages_sent']}   "
        f"errors {view['total_errors']}   success "
        f"{'-' if rate is None else f'{rate:.2%}'}   broker "
        f"{'connected' if view.get('broker_connected') else 'DISCONNECTED'}",
        "",
    ]
    header = (
        "channel",
        "active",
        "total",
        "published",
        "sent",
        "failed",
        "errors",
        "rejected",
        "success",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "last error",
    )
    rows = [header]
    for name, m in view["managers"].items():
        last = m["last_error"]
        rows.append(
            (
                name,
                str(m["active_connections"]),
                str(m["total_connections"]),
                str(m["messages_published"]),
                str(m["messages_sent"]),
                str(m["messages_failed"]),
                str(m["errors"]),
                str(sum(m["rejected"].values())),
                "-" if m["success_rate"] is None else f"{m['success_rate']:.2%}",
                *(_milliseconds(m["latency_seconds"][p]) for p in ("p50", "p90", "p99")),
                "-" if last is None else last["type"],
            )
        )
    lines += _table(rows)
    nodes = view.get("nodes")
    if nodes:
        lines += ["", *_table(_node_rows(nodes), last_left=False)]
    return "\n".join(lines)


def _node_rows(nodes: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The ``nodes`` of the metrics view: one row per gateway process in the cluster."""
    rows: list[tuple[str, ...]] = [
        ("node", "address", "worker", "pid", "uptime", "connections", "sent", "last seen")
    ]
    for node in nodes:
        # uptime is measured at the view's time: started + uptime is the view's "now".
        age = node["started"] + node["uptime"] - node["last_seen"]
        rows.append(
            (
                str(node["id"]),
                str(node["address"]),
                str(node["worker"]),
                str(node["pid"]),
                f"{node['uptime']:.0f}s",
                str(node["connections"]),
                str(node["sent"]),
                f"{max(0.0, age):.1f}s ago",
            )
        )
    return rows


def _table(rows: Sequence[tuple[str, ...]], *, last_left: bool = True) -> list[str]:
    """Rows as aligned text: the first column (and by default the last) to the left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, len(widths) - 1} if last_left else {0, 1}
    return [
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
