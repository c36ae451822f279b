"""Settings: frozen values, loaded from defaults < ``WSGATEWAY_*`` environment < TOML < flags.

Every value is validated here, once; a bad one raises :class:`SettingsError` naming the
setting, the value and what is allowed, which the CLI prints as one line and exits 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SettingsError

DEFAULT_CHANNELS = ("market", "ticker", "orderbook", "trades", "user")
CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_PREFIX = "WSGATEWAY_"
# What a browser sends as Origin (RFC 6454): scheme://host[:port]; "*." allows subdomains.
ORIGIN = re.compile(r"^https?://(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one channel (SPEC, "Rate limits and other limits")."""

    #: new connections one client address may open per minute (IPv6: per /64)
    connections_per_minute: int = 60
    #: new connections the channel admits per second, from all addresses (a token bucket
    #: holding up to handshake_burst): 10,000 clients dropped at once are back in ~10 s
    handshakes_per_second: int = 1000
    handshake_burst: int = 1000
    messages_per_second: int = 100
    max_connections: int = 10_000
    max_connections_per_ip: int = 100
    max_topics: int = 100
    max_message_size: int = 65_536
    max_outbox_bytes: int = 1_048_576
    heartbeat: float = 20.0
    #: seconds to hold writes so more frames share one system call (0: write every loop turn)
    write_delay: float = 0.0
    #: seconds a client may stay over max_outbox_bytes before it is cut (1013); outbox.py
    slow_consumer_grace: float = 2.0
    #: updates the broker keeps per topic for resume (0: none); see brokers/base.py
    history_size: int = 100
    #: seconds an update stays in a topic's history
    history_ttl: float = 300.0
    #: seconds a topic's numbering (epoch, seq) outlives its last publish
    topic_ttl: float = 86_400.0
    #: most updates one resume replays; a client further behind gets recovered: false
    max_replay: int = 1000
    #: what a topic keeps and how slow clients are served (protocol.md, "Topic modes"):
    #: stream, last, book, or auto (last on ticker and market, book on orderbook, else stream)
    mode: str = "auto"
    #: price levels a book topic keeps per side; the worst beyond it are dropped
    max_book_levels: int = 1000
    #: book updates and snapshots carry a CRC32 of the top of the book
    checksum: bool = True
    #: seconds between position heartbeats for every connection that did not ask (0: none)
    position_heartbeat: int = 0

    def mode_for(self, channel: str) -> str:
        """The topic mode of ``channel`` under these limits (``auto`` resolved)."""
        if self.mode != "auto":
            return self.mode
        return AUTO_MODES.get(channel, "stream")


MODES = ("auto", "stream", "last", "book")
#: the mode ``auto`` gives a channel: the conventions of the default channels' names
AUTO_MODES = {"ticker": "last", "market": "last", "orderbook": "book"}
LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(Limits))
#: limits that are not numbers: no wsgateway_limit_* gauge (mode has wsgateway_channel_mode)
NON_NUMERIC_LIMITS = frozenset({"mode", "checksum"})
# Smallest value each limit may take: zero would make a channel unusable, not "unlimited".
_LIMIT_MINIMUM: dict[str, float] = {
    "connections_per_minute": 1,
    "handshakes_per_second": 1,
    "handshake_burst": 1,
    "messages_per_second": 1,
    "max_connections": 1,
    "max_connections_per_ip": 1,
    "max_topics": 1,
    "max_message_size": 128,
    "max_outbox_bytes": 1024,
    "heartbeat": 0.1,
    "write_delay": 0.0,
    "slow_consumer_grace": 0.0,
    "history_size": 0,
    "history_ttl": 1.0,
    "topic_ttl": 1.0,
    "max_replay": 1,
    "max_book_levels": 10,
    "position_heartbeat": 0,
}
# Limits measured in (fractions of) seconds; the others are whole numbers.
_LIMIT_MAXIMUM_SECONDS = {
    "heartbeat": 3600.0,
    "write_delay": 0.05,
    "slow_consumer_grace": 60.0,
    "history_ttl": 7 * 86400.0,
    "topic_ttl": 365 * 86400.0,
}
FLOAT_LIMITS = frozenset(_LIMIT_MAXIMUM_SECONDS)
#: close_timeout bounds: long enough for a close handshake, short enough for a deploy
CLOSE_TIMEOUT_RANGE = (0.1, 60.0)
DRAIN_SECONDS_RANGE = (0.0, 600.0)
MAX_WORKERS = 64
BROKER_SCHEMES = ("memory://", "redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one gateway process needs to know."""

    host: str = "127.0.0.1"
    port: int = 8080
    broker: str = "memory://"
    publish_token: str | None = None
    jwt_secret: str | None = None
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    #: Origins whose browser pages may connect (403 otherwise); empty admits every origin
    allowed_origins: tuple[str, ...] = ()
    #: Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For / Forwarded
    #: header names the client; empty: the TCP peer is the client, headers are ignored
    trusted_proxies: tuple[str, ...] = ()
    #: When set, a JWT must carry this ``aud`` / ``iss`` (401 otherwise)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: When set (seconds), a JWT must have an ``exp`` at most this far ahead (401 otherwise)
    max_token_lifetime: int | None = None
    defaults: Limits = Limits()
    overrides: Mapping[str, Limits] = field(default_factory=dict)
    demo: bool = False
    log_level: str = "INFO"
    #: seconds a connection has to deliver a complete request head (also the longest an
    #: idle keep-alive HTTP connection is held); then it is closed (wsgateway.listener)
    header_timeout: float = 10.0
    #: connections one address may hold before they become WebSocket sessions; a new one
    #: past it is closed at once
    max_pending_per_ip: int = 256
    #: a separate listener for /metrics, /api/ws/metrics, /healthz, /readyz and the status
    #: page (None: they are served on the public port); metrics_host None: the public host
    metrics_host: str | None = None
    metrics_port: int | None = None
    #: seconds a closed connection's socket may linger (close handshake, unread buffer)
    #: before it is reset; shutdown takes about this long at most
    close_timeout: float = 5.0
    #: seconds over which a draining node closes its clients (1012), in jittered batches
    #: so that they do not reconnect to the other nodes all at once
    drain_seconds: float = 10.0
    #: processes sharing the port (SO_REUSEPORT); more than 1 needs a shared broker
    workers: int = 1

    def limits_for(self, channel: str) -> Limits:
        """The limits of ``channel``: its own table if it has one, else the defaults."""
        return self.overrides.get(channel, self.defaults)

    def __repr__(self) -> str:
        # Secrets must never reach a log line or a traceback.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for secret in ("publish_token", "jwt_secret"):
            if shown[secret] is not None:
                shown[secret] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


TOP_LEVEL_KEYS = (
    "host",
    "port",
    "broker",
    "publish_token",
    "jwt_secret",
    "channels",
    "allowed_origins",
    "trusted_proxies",
    "jwt_audience",
    "jwt_issuer",
    "max_token_lifetime",
    "log_level",
    "header_timeout",
    "max_pending_per_ip",
    "metrics_host",
    "metrics_port",
    "close_timeout",
    "drain_seconds",
    "workers",
)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Longest max_token_lifetime: a year (a bound longer than that bounds nothing).
MAX_TOKEN_LIFETIME = 365 * 86400


def load_settings(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    assignments: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from the layers, later layers winning.

    ``env`` is the process environment (only ``WSGATEWAY_*`` names are read), ``config_file``
    a TOML file, ``assignments`` a document shaped like that file (``serve --set``, read as
    if it followed the file), ``flags`` the command-line values that were given (``None``
    means not given).
    """
    top: dict[str, Any] = {}
    default_limits: dict[str, Any] = {}
    channel_limits: dict[str, tuple[str, dict[str, Any]]] = {}

    for name, value in _read_env(env or {}).items():
        (default_limits if name in LIMIT_NAMES else top)[name] = value

    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), _read_toml(Path(config_file))))
    if assignments:
        layers.append(("--set", assignments))
    for source, document in layers:
        for key, value in document.items():
            if key == "defaults":
                default_limits.update(_limit_table("defaults", value))
            elif key in ("channel", "channels") and isinstance(value, dict):
                # TOML cannot hold both `channels = [...]` and `[channels.x]` (the SPEC's
                # example does not parse), so overrides live in `[channel.x]`; `[channels.x]`
                # is accepted too when the file gives no channel list.
                for channel, table in value.items():
                    where = f"{key}.{channel}"
                    earlier = channel_limits.get(channel, ("", {}))[1]
                    channel_limits[channel] = (where, {**earlier, **_limit_table(where, table)})
            elif key in TOP_LEVEL_KEYS:
                top[key] = value
            else:
                raise SettingsError(key, value, f"unknown key in {source}")
    for key, value in (flags or {}).items():
        if key not in (*TOP_LEVEL_KEYS, "demo"):
            raise SettingsError(key, value, "not a setting that can be given as a flag")
        if value is not None:
            top[key] = value

    return _build(top, default_limits, channel_limits)


def _read_env(env: Mapping[str, str]) -> dict[str, str]:
    known = (*TOP_LEVEL_KEYS, *LIMIT_NAMES, "config")
    values: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "config":
            continue  # read by the CLI, which passes it on as config_file
        if key not in known:
            raise SettingsError(name, value, "unknown WSGATEWAY_* variable")
        values[key] = value
    return values


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise SettingsError("config", str(path), f"cannot read the file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", str(path), f"not valid TOML ({exc})") from exc


def _limit_table(where: str, table: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SettingsError(where, table, "expected a table of limits")
    for key in table:
        if key not in LIMIT_NAMES:
            raise SettingsError(
                f"{where}.{key}", table[key], "unknown limit; allowed: " + ", ".join(LIMIT_NAMES)
            )
    return dict(table)


def _build(
    top: dict[str, Any],
    default_limits: dict[str, Any],
    channel_limits: dict[str, tuple[str, dict[str, Any]]],
) -> Settings:
    base = Settings()
    host = _string("host", top.get("host", base.host))
    port = _integer("port", top.get("port", base.port), 0, 65535)
    broker = _broker_url(top.get("broker", base.broker))
    publish_token = _optional_secret("publish_token", top.get("publish_token"), 16)
    # HS256 keys shorter than the hash (32 bytes) are weak (RFC 7518, 3.2).
    jwt_secret = _optional_secret("jwt_secret", top.get("jwt_secret"), 32)
    channels = _channel_list(top.get("channels", base.channels))
    allowed_origins = _origin_list(top.get("allowed_origins", base.allowed_origins))
    trusted_proxies = _network_list(top.get("trusted_proxies", base.trusted_proxies))
    jwt_audience = _optional_string("jwt_audience", top.get("jwt_audience"))
    jwt_issuer = _optional_string("jwt_issuer", top.get("jwt_issuer"))
    max_token_lifetime = None
    if top.get("max_token_lifetime") not in (None, ""):
        max_token_lifetime = _integer(
            "max_token_lifetime", top["max_token_lifetime"], 1, MAX_TOKEN_LIFETIME
        )
    log_level = _string("log_level", top.get("log_level", base.log_level)).upper()
    if log_level not in _LOG_LEVELS:
        raise SettingsError("log_level", log_level, "allowed: " + ", ".join(_LOG_LEVELS))

    header_timeout = _number(
        "header_timeout", top.get("header_timeout", base.header_timeout), 0.5, 3600.0
    )
    max_pending_per_ip = _integer(
        "max_pending_per_ip", top.get("max_pending_per_ip", base.max_pending_per_ip), 1, 2**31 - 1
    )
    metrics_host, metrics_port = _metrics_listener(top, host, port)
    close_timeout = _number(
        "close_timeout", top.get("close_timeout", base.close_timeout), *CLOSE_TIMEOUT_RANGE
    )
    drain_seconds = _number(
        "drain_seconds", top.get("drain_seconds", base.drain_seconds), *DRAIN_SECONDS_RANGE
    )
    workers = _integer("workers", top.get("workers", base.workers), 1, MAX_WORKERS)
    if workers > 1 and broker.startswith("memory://"):
        raise SettingsError(
            "workers",
            workers,
            "more than 1 worker needs a shared broker (broker = redis://host:port/db): "
            "with memory:// each process would only see its own publishes",
        )

    defaults = _limits("defaults", Limits(), default_limits)
    overrides: dict[str, Limits] = {}
    for channel, (where, table) in channel_limits.items():
        if channel not in channels:
            raise SettingsError(
                where, table, "not a configured channel; configured: " + ", ".join(channels)
            )
        overrides[channel] = _limits(where, defaults, table)
    if "user" in channels:
        mode = overrides.get("user", defaults).mode_for("user")
        if mode != "stream":
            raise SettingsError(
                "channel.user.mode",
                mode,
                "the user channel carries private messages, which are never conflated or "
                "replaced: only stream",
            )
    return Settings(
        host=host,
        port=port,
        broker=broker,
        publish_token=publish_token,
        jwt_secret=jwt_secret,
        channels=channels,
        allowed_origins=allowed_origins,
        trusted_proxies=trusted_proxies,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        max_token_lifetime=max_token_lifetime,
        defaults=defaults,
        overrides=overrides,
        demo=bool(top.get("demo", False)),
        log_level=log_level,
        header_timeout=header_timeout,
        max_pending_per_ip=max_pending_per_ip,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        close_timeout=close_timeout,
        drain_seconds=drain_seconds,
        workers=workers,
    )


def _metrics_listener(top: dict[str, Any], host: str, port: int) -> tuple[str | None, int | None]:
    raw_host, raw_port = top.get("metrics_host"), top.get("metrics_port")
    metrics_host = None if raw_host in (None, "") else _string("metrics_host", raw_host)
    metrics_port = None if raw_port in (None, "") else _integer("metrics_port", raw_port, 0, 65535)
    if metrics_port is None:
        if metrics_host is not None:
            raise SettingsError("metrics_host", metrics_host, "set metrics_port too")
        return None, None
    if metrics_port != 0 and metrics_port == port and (metrics_host or host) == host:
        raise SettingsError("metrics_port", metrics_port, "must differ from port on the same host")
    return metrics_host, metrics_port


def _limits(where: str, base: Limits, values: Mapping[str, Any]) -> Limits:
    checked: dict[str, Any] = {}
    for name, value in values.items():
        setting = name if where == "defaults" else f"{where}.{name}"
        if name == "mode":
            checked[name] = _choice(setting, value, MODES)
        elif name == "checksum":
            checked[name] = _boolean(setting, value)
        elif name == "position_heartbeat":
            checked[name] = _integer(setting, value, 0, 3600)
        elif name in FLOAT_LIMITS:
            checked[name] = _number(
                setting, value, _LIMIT_MINIMUM[name], _LIMIT_MAXIMUM_SECONDS[name]
            )
        else:
            checked[name] = _integer(setting, value, int(_LIMIT_MINIMUM[name]), 2**31 - 1)
    return dataclasses.replace(base, **checked)


def _broker_url(value: object) -> str:
    url = _string("broker", value)
    if not url.startswith(BROKER_SCHEMES):
        raise SettingsError(
            "broker",
            url,
            "allowed: memory:// (one process) or redis://[:password@]host:port/db "
            "(rediss:// with TLS, unix:///path/to/redis.sock)",
        )
    return url


def _string(setting: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise SettingsError(setting, value, "expected a non-empty string")
    return value


def _optional_string(setting: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    return _string(setting, value)


def _optional_secret(setting: str, value: object, min_length: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) < min_length:
        # Show no part of a secret, not even a short wrong one.
        raise SettingsError(
            setting, "***", f"expected a string of at least {min_length} characters"
        )
    return value


def _integer(setting: str, value: object, low: int, high: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        number = int(value)
    if number is None or not low <= number <= high:
        raise SettingsError(setting, value, f"expected an integer from {low} to {high}")
    return number


def _choice(setting: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise SettingsError(setting, value, "allowed: " + ", ".join(allowed))
    return value.strip().lower()


def _boolean(setting: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise SettingsError(setting, value, "expected true or false")


def _number(setting: str, value: object, low: float, high: float) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not low <= number <= high:
        raise SettingsError(setting, value, f"expected a number from {low:g} to {high:g}")
    return number


def _channel_list(value: object) -> tuple[str, ...]:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names:
        raise SettingsError("channels", value, "expected a non-empty list of channel names")
    cleaned = tuple(str(name).strip() for name in names)
    for name in cleaned:
        if not CHANNEL_NAME.match(name):
            raise SettingsError(
                "channels",
                name,
                "channel names are 1-32 characters of a-z 0-9 _ - starting with a letter",
            )
    if len(set(cleaned)) != len(cleaned):
        raise SettingsError("channels", value, "channel names must be unique")
    return cleaned


def _origin_list(value: object) -> tuple[str, ...]:
    entries = value.split(",") if isinstance(value, str) else value
    if not isinstance(entries, list | tuple):
        raise SettingsError("allowed_origins", value, "expected a list of origins")
    origins = []
    for entry in entries:
        origin = str(entry).strip().lower().rstrip("/")
        if not origin and isinstance(value, str):
            continue  # WSGATEWAY_ALLOWED_ORIGINS="" or a trailing comma
        if origin != "null" and not ORIGIN.match(origin):
            raise SettingsError(
                "allowed_origins",
                entry,
                "expected origins like https://app.example.com, https://*.example.com:8443 "
                "or null (scheme, host and port only, no path)",
            )
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _network_list(value: object) -> tuple[str, ...]:
    entries = value.split(",") if isinstance(value, str) else value
    if not isinstance(entries, list | tuple):
        raise SettingsError("trusted_proxies", value, "expected a list of addresses or networks")
    networks = []
    for entry in entries:
        text = str(entry).strip()
        if not text and isinstance(value, str):
            continue  # WSGATEWAY_TRUSTED_PROXIES="" or a trailing comma
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            raise SettingsError(
                "trusted_proxies",
                entry,
                f"expected IP addresses or networks like 10.0.0.5, 10.0.0.0/8 or fd00::/8 ({exc})",
            ) from None
        networks.append(str(network))
    return tuple(dict.fromkeys(networks))
