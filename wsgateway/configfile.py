"""The settings as TOML text: ``config init`` writes a file, ``config check`` shows the
effective settings, ``serve --set`` reads single assignments. Pure, except
:func:`write_new_file`.

Both texts are generated from the :class:`~wsgateway.settings.Settings` and
:class:`~wsgateway.settings.Limits` definitions (names, defaults) so that they cannot drift
from the code; only the one-line descriptions live here, and a setting without one fails
:func:`describe` (and the tests) at once. Validation stays in settings.py: nothing here
decides whether a value is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import __version__
from .errors import SettingsError, UsageError
from .settings import LIMIT_NAMES, TOP_LEVEL_KEYS, Limits, Settings

#: One line per setting, for the generated file. Ranges and details: README, Configuration.
DESCRIPTIONS = {
    "host": "address the public listener binds to",
    "port": "its port; 0 picks a free one (printed at start)",
    "broker": 'memory:// for one process; "redis://host:6379/0" to share topics between processes',
    "publish_token": "bearer token for POST /api/publish (16+ characters); unset: loopback only",
    "jwt_secret": "HS256 key of the user channel's JWTs (32+ characters); unset: user refuses all",
    "channels": "the channels served; user is private (JWT)",
    "allowed_origins": "browser origins that may connect, e.g. https://app.example.com; []: any",
    "trusted_proxies": "reverse proxies (addresses, CIDR) whose X-Forwarded-For names the client",
    "jwt_audience": 'when set, a JWT must carry this "aud"',
    "jwt_issuer": 'when set, a JWT must carry this "iss"',
    "max_token_lifetime": 'when set (seconds), a JWT needs an "exp" at most this far ahead',
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "header_timeout": "seconds a connection has to send its request head (and idle keep-alive)",
    "max_pending_per_ip": "connections per address not yet upgraded to WebSocket",
    "metrics_host": "address of the metrics listener (needs metrics_port); default: host",
    "metrics_port": "a separate listener for /metrics, /api/ws/metrics, health and status page",
    "close_timeout": "seconds a closed connection's socket may linger (0.1-60)",
    "drain_seconds": "seconds a drain spreads its 1012 closes over (0-600)",
    "workers": "processes sharing the port; more than 1 needs a redis:// broker",
    "connections_per_minute": "new connections one client address may open per minute",
    "handshakes_per_second": "new connections the channel admits per second, all addresses",
    "handshake_burst": "handshakes the budget saves up while idle",
    "messages_per_second": "frames one client may send per second",
    "max_connections": "open connections per channel (503 past it)",
    "max_connections_per_ip": "open connections per client address, per channel (429)",
    "max_topics": "topics one connection may hold",
    "max_message_size": "bytes in one client frame (1009 past it)",
    "max_outbox_bytes": "bytes queued for one client before it is a slow consumer",
    "heartbeat": "seconds between server pings",
    "write_delay": "seconds (at most 0.05) to hold writes so more frames share a system call",
    "slow_consumer_grace": "seconds a client over max_outbox_bytes has to catch up (then 1013)",
    "history_size": "updates kept per topic for resume (0: none)",
    "history_ttl": "seconds a topic's history outlives its last publish",
    "topic_ttl": "seconds a topic's numbering (epoch, seq) outlives its last publish",
    "max_replay": "most updates one resume replays",
    "mode": "auto, stream, last or book; auto: last on ticker/market, book on orderbook",
    "max_book_levels": "price levels a book topic keeps per side (the worst are dropped)",
    "checksum": "book updates and snapshots carry a CRC32 of the top of the book",
    "position_heartbeat": "seconds between position heartbeats unless a client asks (0: none)",
}
#: What an unset setting could look like, shown commented out.
EXAMPLES: dict[str, Any] = {
    "publish_token": "at least 16 characters",
    "jwt_secret": "at least 32 characters",
    "jwt_audience": "market-data",
    "jwt_issuer": "https://auth.example.com",
    "max_token_lifetime": 3600,
    "metrics_host": "10.0.0.5",
    "metrics_port": 9100,
}
SECRETS = ("publish_token", "jwt_secret")
MASK = "****"

_HEADER = f"""\
# wsgateway settings, written by `wsgateway config init` (wsgateway {__version__}).
#
# Every setting is listed with its default. The commented-out ones keep the default (a later
# version's default, should it change): uncomment a line to set it.
# Precedence: defaults < WSGATEWAY_* environment < this file < flags of `wsgateway serve`.
# Check it with `wsgateway config check --config FILE`. `demo` is a flag only (--demo).
# This file holds secrets: keep it private (it was created readable by its owner only).
"""


def describe(name: str) -> str:
    try:
        return DESCRIPTIONS[name]
    except KeyError:
        raise KeyError(f"configfile.DESCRIPTIONS has no line for the setting {name!r}") from None


def toml_value(value: object) -> str:
    """``value`` as a TOML value (the types settings take: str, int, float, bool, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no TOML for {value!r} in a setting")
        return repr(value)
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise ValueError(f"no TOML for {type(value).__name__} in a setting")


def _basic_string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    for char in sorted({c for c in escaped if ord(c) < 0x20 or ord(c) == 0x7F}):
        escaped = escaped.replace(char, f"\\u{ord(char):04x}")
    return f'"{escaped}"'


def _top_level_fields() -> Iterable[dataclasses.Field[Any]]:
    # Settings' order, restricted to what the file can hold (not defaults/overrides/demo).
    return (f for f in dataclasses.fields(Settings) if f.name in TOP_LEVEL_KEYS)


def generated_secrets() -> dict[str, str]:
    # 32 random bytes: the HS256 key as long as the hash (RFC 7518, 3.2).
    return {"publish_token": secrets.token_urlsafe(24), "jwt_secret": secrets.token_urlsafe(32)}


def template(values: dict[str, str] | None = None) -> str:
    """The text of ``config init``: every setting with its default and one line, the
    ``values`` (the generated secrets) set."""
    values = generated_secrets() if values is None else values
    defaults = Settings()
    lines = [_HEADER]
    for f in _top_level_fields():
        lines.append(f"# {describe(f.name)}")
        if f.name in values:
            lines.append(f"{f.name} = {toml_value(values[f.name])}")
        else:
            default = getattr(defaults, f.name)
            if default is None:
                lines.append(
                    f"# (unset by default) e.g.: {f.name} = {toml_value(EXAMPLES[f.name])}"
                )
            else:
                lines.append(f"# {f.name} = {toml_value(default)}")
        lines.append("")
    lines += [
        "[defaults]",
        "# The limits of every channel; a [channel.NAME] table below overrides them for one.",
        "",
    ]
    for f in dataclasses.fields(Limits):
        lines += [f"# {describe(f.name)}", f"# {f.name} = {toml_value(f.default)}", ""]
    lines += [
        "# Overrides for one channel: any limit above, e.g.",
        "# [channel.ticker]",
        "# max_outbox_bytes = 262144",
        "",
    ]
    return "\n".join(lines)


def effective(settings: Settings) -> str:
    """The settings in force as TOML (``config check``), secrets masked: every top-level
    setting, the default limits and each channel's overrides in full."""
    lines = ["# effective settings (defaults < environment < file); secrets masked", ""]
    for f in _top_level_fields():
        value = getattr(settings, f.name)
        if value is None:
            lines.append(f"# {f.name} is unset")
        else:
            shown = MASK if f.name in SECRETS else value
            lines.append(f"{f.name} = {toml_value(shown)}")
    lines += ["", "[defaults]", *_limit_lines(settings.defaults)]
    for channel, limits in settings.overrides.items():
        lines += ["", f"[channel.{channel}]", *_limit_lines(limits)]
    return "\n".join(lines) + "\n"


def _limit_lines(limits: Limits) -> list[str]:
    return [f"{name} = {toml_value(getattr(limits, name))}" for name in LIMIT_NAMES]


# -- serve --set ------------------------------------------------------------------------------


def parse_assignments(texts: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as a document shaped like the TOML file, for
    :func:`~wsgateway.settings.load_settings` (which checks names and values).

    KEY is a top-level setting (``port``), a limit (``max_topics``: a default for every
    channel, as in the environment), ``defaults.LIMIT``, or ``channel.NAME.LIMIT`` (also
    ``channels.NAME.LIMIT``). VALUE is read as a TOML value (``100``, ``2.5``, ``true``,
    ``"text"``, ``["a", "b"]``); what is not TOML is taken as a string, so that
    ``--set broker=redis://127.0.0.1:6379/0`` needs no quotes.
    """
    document: dict[str, Any] = {}
    for text in texts:
        key, equals, raw = text.partition("=")
        path = key.strip().split(".")
        if not equals or not all(path):
            raise SettingsError(
                "--set",
                text,
                "expected KEY=VALUE, e.g. --set log_level=DEBUG or "
                "--set channel.ticker.max_connections=100",
            )
        value = _toml_or_string(raw.strip())
        if len(path) == 1 and path[0] in LIMIT_NAMES:
            path = ["defaults", *path]
        elif len(path) == 3 and path[0] in ("channel", "channels"):
            path = ["channel", *path[1:]]  # one table: `channels` may be the list as well
        elif not (len(path) == 1 or (len(path) == 2 and path[0] == "defaults")):
            raise SettingsError(
                "--set", text, "KEY is a setting, a limit, defaults.LIMIT or channel.NAME.LIMIT"
            )
        table = document
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise SettingsError("--set", text, f"{part} was given a value, not a table")
        table[path[-1]] = value
    return document


def _toml_or_string(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


# -- files ------------------------------------------------------------------------------------


def write_new_file(path: Path, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path``, readable by its owner only (it holds secrets); refuse
    an existing file unless ``force``. O_EXCL: no race with another writer."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(fd, 0o600)  # --force over a file that others could read
        handle.write(text)
