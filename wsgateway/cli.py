"""The ``wsgateway`` command. The only place where errors become exit codes.

Exit codes: 0 success, 1 a failure at run time (server unreachable, request refused, a
subscription ended by the gateway, an invalid bench result), 2 a bad setting or bad usage
(one line naming it). Each command's work lives in its own module (configfile, tokens,
subscriber, urls, loadgen); this one parses, dispatches and turns errors into exit codes.
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
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from . import __version__, configfile
from .app import create_app, metrics_address
from .auth import is_loopback_host
from .cluster import node_address
from .configfile import parse_assignments
from .errors import CommandFailed, SettingsError, UsageError
from .gateway import Gateway
from .listener import raise_open_files_limit
from .settings import Settings, load_settings
from .siblings import WorkerRole
from .subscriber import subscribe
from .tokens import mint_user_token, parse_claim, parse_duration
from .urls import gateway_url
from .web import GATEWAY, AccessLogger
from .workers import Supervisor

log = logging.getLogger("wsgateway")

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
URL_HELP = (
    "the gateway: http://HOST:PORT, or any of its URLs (ws://HOST:PORT/ws/ticker, "
    f".../api/publish); default {DEFAULT_URL}"
)

#: ``serve``'s named flags: (flag, setting, help). Every other setting: --set KEY=VALUE.
SERVE_FLAGS = (
    ("--host", "host", "address to listen on (default 127.0.0.1)"),
    ("--port", "port", "port to listen on (default 8080; 0 picks a free one)"),
    ("--broker", "broker", "broker URL (default memory://)"),
    ("--workers", "workers", "processes sharing the port (default 1); >1 needs a redis:// broker"),
    ("--log-level", "log_level", "DEBUG, INFO (default), WARNING or ERROR"),
    (
        "--publish-token",
        "publish_token",
        "bearer token for POST /api/publish (visible in ps: prefer the file or "
        "WSGATEWAY_PUBLISH_TOKEN)",
    ),
    (
        "--jwt-secret",
        "jwt_secret",
        "HS256 key of the user channel (visible in ps: prefer the file or WSGATEWAY_JWT_SECRET)",
    ),
    ("--metrics-host", "metrics_host", "address of the metrics listener (needs --metrics-port)"),
    ("--metrics-port", "metrics_port", "a separate listener for metrics, health, status page"),
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's own parser (for its usage on an unknown option)."""
    parser = argparse.ArgumentParser(
        prog="wsgateway", description="Real-time WebSocket gateway for market data."
    )
    parser.add_argument("--version", action="version", version=f"wsgateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Settings: defaults < WSGATEWAY_* environment < "
        "--config file < --set < the named flags.",
    )
    serve.add_argument("--config", help="TOML settings file (or WSGATEWAY_CONFIG)")
    for flag, _setting, text in SERVE_FLAGS:
        serve.add_argument(flag, help=text)
    serve.add_argument(
        "--demo", action="store_true", default=None, help="publish a synthetic market feed"
    )
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting: port=9000, max_topics=50 (every channel), "
        "channel.ticker.max_connections=100; VALUE as in TOML; repeatable",
    )

    token = commands.add_parser(
        "token",
        help="mint a JWT for the user channel",
        description="Print an HS256 JWT for the user channel, signed with the configured "
        "jwt_secret (and carrying jwt_audience / jwt_issuer when they are set).",
    )
    token.add_argument("--sub", required=True, help="the user id (the token's subject)")
    token.add_argument("--ttl", default="1h", help="lifetime: 30s, 15m, 1h (default), 7d")
    token.add_argument("--config", help="TOML settings file (or WSGATEWAY_CONFIG)")
    token.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra claim; VALUE as JSON when it is JSON, else a string; repeatable",
    )

    config = commands.add_parser("config", help="write or check a settings file")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    init = config_commands.add_parser(
        "init",
        help="write a commented settings file with generated secrets",
        description="Write every setting with its default and a comment, and freshly "
        "generated jwt_secret and publish_token, to PATH (- for stdout).",
    )
    init.add_argument("path", nargs="?", default="wsgateway.toml", metavar="PATH|-")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    check = config_commands.add_parser(
        "check",
        help="validate the settings and print the effective ones",
        description="Load the settings as serve does (environment and file) and print them, "
        "secrets masked; exit 2 with the reason when a setting is bad.",
    )
    check.add_argument("--config", help="TOML settings file (or WSGATEWAY_CONFIG)")

    publish = commands.add_parser("publish", help="publish one message over the HTTP API")
    publish.add_argument("channel")
    publish.add_argument("topic")
    publish.add_argument("data", help="the message data, as JSON")
    publish.add_argument("--url", default=DEFAULT_URL, help=URL_HELP)
    publish.add_argument(
        "--token",
        default=os.environ.get("WSGATEWAY_PUBLISH_TOKEN"),
        help="publish token (default: $WSGATEWAY_PUBLISH_TOKEN)",
    )

    subscribe = commands.add_parser(
        "subscribe",
        help="print received messages as JSON lines",
        description="Print the subscribe reply and every update as JSON lines. Exits 1 with "
        "the gateway's words when it refuses the connection or the subscribe, or closes.",
    )
    subscribe.add_argument("channel")
    subscribe.add_argument("topics", nargs="+", metavar="TOPIC")
    subscribe.add_argument("--url", default=DEFAULT_URL, help=URL_HELP)
    subscribe.add_argument("--token", help="JWT for private channels (user)")
    subscribe.add_argument(
        "--count",
        type=int,
        default=0,
        help="exit after this many updates (default: run until interrupted)",
    )

    metrics = commands.add_parser("metrics", help="show the gateway's metrics")
    metrics.add_argument("--url", default=DEFAULT_URL, help=URL_HELP)
    metrics.add_argument("--json", action="store_true", help="print the raw JSON view")

    bench = commands.add_parser(
        "bench",
        add_help=False,  # --help goes to the load generator, which owns every option
        help="load-test a running gateway (N clients, a publisher); --help for options",
    )
    bench.add_argument("loadgen_args", nargs=argparse.REMAINDER)
    by_name = {
        "serve": serve,
        "token": token,
        "config init": init,
        "config check": check,
        "publish": publish,
        "subscribe": subscribe,
        "metrics": metrics,
    }
    return parser, by_name


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse's parse_args, but an unknown option is reported with the usage of the
    command it was given to (argparse's subcommands hand it to the top level's usage)."""
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        name = args.command + (f" {args.config_command}" if args.command == "config" else "")
        commands[name].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Every option, --help included, belongs to the load generator.
        return bench(argv[1:])
    args = parse(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "token":
            return mint_token(args)
        if args.command == "config":
            return config_init(args) if args.config_command == "init" else config_check(args)
        if args.command == "publish":
            return asyncio.run(publish(args))
        if args.command == "subscribe":
            gateway = gateway_url(args.url)
            if gateway.channel not in (None, args.channel):
                raise UsageError(
                    f"--url names the channel {gateway.channel}, the command {args.channel}"
                )
            asyncio.run(
                subscribe(gateway, args.channel, args.topics, token=args.token, count=args.count)
            )
            return EXIT_OK
        return asyncio.run(show_metrics(args))
    except (SettingsError, UsageError) as exc:
        print(f"wsgateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"wsgateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _settings(config: str | None, **layers: Any) -> Settings:
    """The settings as every command loads them: the environment, the file of --config (or
    WSGATEWAY_CONFIG), then ``layers`` (--set, flags)."""
    return load_settings(
        env=os.environ, config_file=config or os.environ.get("WSGATEWAY_CONFIG"), **layers
    )


# -- serve ----------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    flags = {setting: getattr(args, flag[2:].replace("-", "_")) for flag, setting, _ in SERVE_FLAGS}
    settings = _settings(
        args.config,
        assignments=parse_assignments(args.set),
        flags={**flags, "demo": args.demo},
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Every client is a descriptor: the usual soft limit of 1,024 is an outage waiting.
    logging.getLogger("wsgateway").info("open files limit: %s", raise_open_files_limit())
    if settings.workers > 1:
        return Supervisor(settings, _run_worker).run()
    return _run(settings)


# -- token, config ----------------------------------------------------------------------------


def mint_token(args: argparse.Namespace) -> int:
    claims = dict(parse_claim(text) for text in args.claim)
    settings = _settings(args.config)
    print(mint_user_token(settings, args.sub, parse_duration(args.ttl), claims=claims))
    return EXIT_OK


def config_init(args: argparse.Namespace) -> int:
    text = configfile.template()
    if args.path == "-":
        sys.stdout.write(text)
        return EXIT_OK
    configfile.write_new_file(Path(args.path), text, force=args.force)
    print(
        f"wrote {args.path} (readable by you only: it holds the generated jwt_secret and "
        f"publish_token); check it with: wsgateway config check --config {args.path}",
        file=sys.stderr,
    )
    return EXIT_OK


def config_check(args: argparse.Namespace) -> int:
    sys.stdout.write(configfile.effective(_settings(args.config)))
    return EXIT_OK


# -- bench ------------------------------------------------------------------------------------


def bench(argv: list[str]) -> int:
    """The load generator; exit 1 when its result does not measure the server, saying why."""
    from .loadgen.cli import run_once
    from .loadgen.result import invalid_because

    reasons = invalid_because(run_once(argv))
    if reasons:
        print("wsgateway bench: the result is not valid: " + "; ".join(reasons), file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


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
    url = gateway_url(args.url).http("/api/publish")
    answer = await _request("POST", url, json=body, headers=headers)
    print(orjson.dumps(answer).decode())
    return EXIT_OK


async def show_metrics(args: argparse.Namespace) -> int:
    view = await _request("GET", gateway_url(args.url).http("/api/ws/metrics"))
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
