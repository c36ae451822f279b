"""The ``wsgateway`` command. The only place where errors become exit codes.

Exit codes: 0 success, 1 a failure at run time (server unreachable, request refused, a
subscription ended by the gateway, an invalid bench result), 2 a bad setting or bad usage
(one line naming it). Each command's work lives in its own module (server, configfile,
tokens, subscriber, urls, metricstable, loadgen); this one parses, dispatches and turns
errors into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from . import __version__, configfile, server
from .configfile import parse_assignments
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandFailed, SettingsError, UsageError
from .listener import raise_open_files_limit
from .metricstable import format_metrics
from .settings import Settings, load_settings
from .subscriber import subscribe
from .tokens import mint_user_token, parse_claim, parse_duration
from .urls import gateway_url
from .workers import Supervisor

log = logging.getLogger("wsgateway")

DEFAULT_URL = "http://127.0.0.1:8080"
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
    _add_setting_options(serve)

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
        description="Load the settings as serve would with the same options (environment, "
        "file, --set, flags) and print them, secrets masked; exit 2 with the reason when a "
        "setting is bad. E.g. wsgateway config check --config prod.toml --set max_topics=50",
    )
    _add_setting_options(check)

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
        description="Print the subscribe reply and every update, snapshot, reset and gap as "
        "JSON lines (through the Python SDK: duplicates dropped, holes repaired, books checked "
        "against their checksums). Exits 1 with the gateway's words when it refuses the "
        "connection or the subscribe, or closes.",
    )
    subscribe.add_argument("channel")
    subscribe.add_argument("topics", nargs="+", metavar="TOPIC")
    subscribe.add_argument("--url", default=DEFAULT_URL, help=URL_HELP)
    subscribe.add_argument("--token", help="JWT for private channels (user)")
    subscribe.add_argument(
        "--count",
        type=int,
        default=0,
        help="exit after this many updates and snapshots (default: run until interrupted)",
    )
    subscribe.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        help="ask for a position heartbeat every SECONDS (1-3600): printed, and a position "
        "past the one held repairs the topic",
    )
    subscribe.add_argument(
        "--max-rate",
        type=float,
        metavar="N",
        help="at most N updates a second per topic (last and book channels: the gateway "
        "merges the others into one frame with from_seq)",
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


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    """The options that make up the settings (serve's, and config check's to preview them)."""
    parser.add_argument("--config", help="TOML settings file (or WSGATEWAY_CONFIG)")
    for flag, _setting, text in SERVE_FLAGS:
        parser.add_argument(flag, help=text)
    parser.add_argument(
        "--demo", action="store_true", default=None, help="publish a synthetic market feed"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting: port=9000, max_topics=50 (every channel), "
        "channel.ticker.max_connections=100; VALUE as in TOML; repeatable",
    )


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
            if args.heartbeat is not None and not 1 <= args.heartbeat <= 3600:
                raise UsageError(f"--heartbeat {args.heartbeat}: expected 1 to 3600 seconds")
            asyncio.run(
                subscribe(
                    gateway,
                    args.channel,
                    args.topics,
                    token=args.token,
                    count=args.count,
                    heartbeat=args.heartbeat,
                    max_rate=args.max_rate,
                )
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


def _settings_of(args: argparse.Namespace) -> Settings:
    """The settings that serve's options (:func:`_add_setting_options`) make."""
    flags = {setting: getattr(args, flag[2:].replace("-", "_")) for flag, setting, _ in SERVE_FLAGS}
    return _settings(
        args.config,
        assignments=parse_assignments(args.set),
        flags={**flags, "demo": args.demo},
    )


def serve(args: argparse.Namespace) -> int:
    settings = _settings_of(args)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Every client is a descriptor: the usual soft limit of 1,024 is an outage waiting.
    logging.getLogger("wsgateway").info("open files limit: %s", raise_open_files_limit())
    if settings.workers > 1:
        return Supervisor(settings, server.run_worker).run()
    return server.run(settings)


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
    sys.stdout.write(configfile.effective(_settings_of(args)))
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
