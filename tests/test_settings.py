"""Unit tests for wsgateway.settings: defaults, layering, per-channel limits, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from wsgateway.errors import SettingsError
from wsgateway.settings import (
    DEFAULT_CHANNELS,
    LIMIT_NAMES,
    Limits,
    Settings,
    load_settings,
)

# The SPEC's "Rate limits and other limits" table.
SPEC_LIMITS: dict[str, float] = {
    "connections_per_minute": 60,
    "messages_per_second": 100,
    "max_connections": 10000,
    "max_connections_per_ip": 100,
    "max_topics": 100,
    "max_message_size": 65536,
    "max_outbox_bytes": 1048576,
    "heartbeat": 20,
}
# Ours beyond the SPEC's table: off by default, so the defaults behave as the SPEC says.
EXTRA_LIMITS: dict[str, float] = {
    "write_delay": 0.0,
    "slow_consumer_grace": 2.0,
    # the channel's handshake budget: 10,000 clients dropped at once are back in ~10 s
    "handshakes_per_second": 1000,
    "handshake_burst": 1000,
    # history and resume (brokers/base.py)
    "history_size": 100,
    "history_ttl": 300.0,
    "topic_ttl": 86_400.0,
    "max_replay": 1000,
    "mode": "auto",
    "max_book_levels": 1000,
    "checksum": True,
    "position_heartbeat": 0,
}

PUBLISH_TOKEN = "publish-token-Zq8v1XkP"
JWT_SECRET = "jwt-secret-that-is-long-enough-4a9f0c2e"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wsgateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def settings_error(**kwargs: Any) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_settings(**kwargs)
    return info.value


# -- defaults ---------------------------------------------------------------------------------


def test_limits_defaults_match_spec_table() -> None:
    limits = Limits()
    assert {name: getattr(limits, name) for name in LIMIT_NAMES} == SPEC_LIMITS | EXTRA_LIMITS
    assert set(LIMIT_NAMES) == set(SPEC_LIMITS) | set(EXTRA_LIMITS)


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("0.002", 0.002), (0.05, 0.05)])
def test_write_delay_accepts_zero_to_50_ms(value: object, expected: float) -> None:
    settings = load_settings(env={"WSGATEWAY_WRITE_DELAY": str(value)})
    assert settings.defaults.write_delay == expected


@pytest.mark.parametrize("value", ["-0.001", "0.051", "1", "soon"])
def test_write_delay_refuses_values_outside_0_to_50_ms(value: str) -> None:
    error = settings_error(env={"WSGATEWAY_WRITE_DELAY": value})
    assert error.setting == "write_delay"
    assert str(error) == f"bad setting write_delay={value!r}: expected a number from 0 to 0.05"


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("0.5", 0.5), (60, 60.0)])
def test_slow_consumer_grace_accepts_zero_to_60_seconds(value: object, expected: float) -> None:
    settings = load_settings(env={"WSGATEWAY_SLOW_CONSUMER_GRACE": str(value)})
    assert settings.defaults.slow_consumer_grace == expected


@pytest.mark.parametrize("value", ["-0.1", "60.5", "never"])
def test_slow_consumer_grace_refuses_values_outside_0_to_60_seconds(value: str) -> None:
    error = settings_error(env={"WSGATEWAY_SLOW_CONSUMER_GRACE": value})
    assert error.setting == "slow_consumer_grace"
    assert str(error) == (
        f"bad setting slow_consumer_grace={value!r}: expected a number from 0 to 60"
    )


def test_slow_consumer_grace_per_channel_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[channel.ticker]\nslow_consumer_grace = 0.25\n")
    settings = load_settings(config_file=path)
    assert settings.limits_for("ticker").slow_consumer_grace == 0.25
    assert settings.limits_for("trades").slow_consumer_grace == 2.0
    error = settings_error(
        config_file=write_toml(tmp_path, "[defaults]\nslow_consumer_grace = -1\n")
    )
    assert error.setting == "slow_consumer_grace"


def test_load_settings_without_layers_gives_defaults() -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.broker == "memory://"
    assert settings.publish_token is None
    assert settings.jwt_secret is None
    assert settings.channels == ("market", "ticker", "orderbook", "trades", "user")
    assert settings.channels == DEFAULT_CHANNELS
    assert settings.defaults == Limits()
    assert dict(settings.overrides) == {}
    assert settings.demo is False
    assert settings.log_level == "INFO"


def test_limits_for_without_override_returns_defaults() -> None:
    settings = load_settings()
    for channel in DEFAULT_CHANNELS:
        assert settings.limits_for(channel) == Limits()


# -- layering: defaults < env < TOML < flags --------------------------------------------------


def test_env_overrides_defaults() -> None:
    settings = load_settings(
        env={
            "WSGATEWAY_HOST": "0.0.0.0",
            "WSGATEWAY_PORT": "9001",
            "WSGATEWAY_BROKER": "memory://",
            "WSGATEWAY_PUBLISH_TOKEN": PUBLISH_TOKEN,
            "WSGATEWAY_JWT_SECRET": JWT_SECRET,
            "WSGATEWAY_CHANNELS": "ticker, trades",
            "WSGATEWAY_LOG_LEVEL": "debug",
            "WSGATEWAY_CONNECTIONS_PER_MINUTE": "30",
            "WSGATEWAY_HEARTBEAT": "2.5",
            "PATH": "/usr/bin",  # not ours: ignored
            "HOME": "/root",
        }
    )
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.publish_token == PUBLISH_TOKEN
    assert settings.jwt_secret == JWT_SECRET
    assert settings.channels == ("ticker", "trades")
    assert settings.log_level == "DEBUG"
    assert settings.defaults == Limits(connections_per_minute=30, heartbeat=2.5)
    assert settings.limits_for("ticker") == Limits(connections_per_minute=30, heartbeat=2.5)


def test_env_config_variable_is_left_to_the_cli() -> None:
    settings = load_settings(env={"WSGATEWAY_CONFIG": "/nonexistent/file.toml"})
    assert settings == Settings()


def test_toml_overrides_env(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
host = "10.1.2.3"
port = 9002
log_level = "warning"

[defaults]
messages_per_second = 7
""",
    )
    settings = load_settings(
        env={
            "WSGATEWAY_HOST": "0.0.0.0",
            "WSGATEWAY_PORT": "9001",
            "WSGATEWAY_MESSAGES_PER_SECOND": "5",
            "WSGATEWAY_MAX_TOPICS": "3",
        },
        config_file=path,
    )
    assert settings.host == "10.1.2.3"
    assert settings.port == 9002
    assert settings.log_level == "WARNING"
    # The file wins per key; env keys the file does not set survive.
    assert settings.defaults == Limits(messages_per_second=7, max_topics=3)


def test_flags_override_toml_and_none_means_not_given(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'host = "10.1.2.3"\nport = 9002\n')
    settings = load_settings(
        env={"WSGATEWAY_PORT": "9001"},
        config_file=path,
        flags={"port": 9003, "host": None, "broker": None, "demo": True},
    )
    assert settings.port == 9003
    assert settings.host == "10.1.2.3"
    assert settings.broker == "memory://"
    assert settings.demo is True


@pytest.mark.parametrize(
    ("env_port", "toml_port", "flag_port", "expected"),
    [
        pytest.param(None, None, None, 8080, id="default"),
        pytest.param("1111", None, None, 1111, id="env"),
        pytest.param("1111", 2222, None, 2222, id="toml-over-env"),
        pytest.param("1111", 2222, 3333, 3333, id="flag-over-toml"),
        pytest.param(None, None, 3333, 3333, id="flag-over-default"),
    ],
)
def test_port_layering(
    tmp_path: Path,
    env_port: str | None,
    toml_port: int | None,
    flag_port: int | None,
    expected: int,
) -> None:
    env = {} if env_port is None else {"WSGATEWAY_PORT": env_port}
    config = None if toml_port is None else write_toml(tmp_path, f"port = {toml_port}\n")
    settings = load_settings(env=env, config_file=config, flags={"port": flag_port})
    assert settings.port == expected


def test_config_file_accepts_str_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 9100\n")
    assert load_settings(config_file=str(path)).port == 9100


def test_full_example_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f"""
host = "127.0.0.1"
port = 8080
broker = "memory://"
publish_token = "{PUBLISH_TOKEN}"
jwt_secret = "{JWT_SECRET}"
channels = ["market", "ticker", "orderbook", "trades", "user"]

[defaults]
connections_per_minute = 60
messages_per_second = 100

[channel.ticker]
max_outbox_bytes = 262144
""",
    )
    settings = load_settings(config_file=path)
    assert settings.publish_token == PUBLISH_TOKEN
    assert settings.jwt_secret == JWT_SECRET
    assert settings.channels == DEFAULT_CHANNELS
    assert settings.limits_for("ticker") == Limits(max_outbox_bytes=262144)
    assert settings.limits_for("market") == Limits()


# -- per-channel overrides --------------------------------------------------------------------


def test_channel_table_overrides_one_channel_on_top_of_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
channels = ["ticker", "trades"]

[defaults]
messages_per_second = 50
max_topics = 10

[channel.ticker]
max_topics = 20
heartbeat = 5
""",
    )
    settings = load_settings(env={"WSGATEWAY_MAX_CONNECTIONS": "500"}, config_file=path)
    defaults = Limits(messages_per_second=50, max_topics=10, max_connections=500)
    assert settings.defaults == defaults
    assert settings.limits_for("trades") == defaults
    assert settings.limits_for("ticker") == dataclasses.replace(
        defaults, max_topics=20, heartbeat=5.0
    )
    assert set(settings.overrides) == {"ticker"}


def test_channels_table_form_is_accepted_without_a_channel_list(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[channels.ticker]
max_outbox_bytes = 262144

[channels.user]
max_connections_per_ip = 3
""",
    )
    settings = load_settings(config_file=path)
    assert settings.channels == DEFAULT_CHANNELS
    assert settings.limits_for("ticker") == Limits(max_outbox_bytes=262144)
    assert settings.limits_for("user") == Limits(max_connections_per_ip=3)
    assert settings.limits_for("market") == Limits()


def test_limits_for_unknown_channel_returns_defaults() -> None:
    settings = load_settings(env={"WSGATEWAY_MAX_TOPICS": "9"})
    assert settings.limits_for("no-such-channel") == Limits(max_topics=9)


def test_limit_values_given_as_numeric_strings_are_converted(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[defaults]\nmax_topics = "12"\nheartbeat = "1.5"\n')
    limits = load_settings(config_file=path).defaults
    assert limits.max_topics == 12
    assert limits.heartbeat == 1.5


def test_limit_minimums_are_accepted(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[defaults]
connections_per_minute = 1
messages_per_second = 1
max_connections = 1
max_connections_per_ip = 1
max_topics = 1
max_message_size = 128
max_outbox_bytes = 1024
heartbeat = 0.1
""",
    )
    assert load_settings(config_file=path).defaults == Limits(
        connections_per_minute=1,
        messages_per_second=1,
        max_connections=1,
        max_connections_per_ip=1,
        max_topics=1,
        max_message_size=128,
        max_outbox_bytes=1024,
        heartbeat=0.1,
    )


def test_port_zero_and_max_are_accepted() -> None:
    assert load_settings(flags={"port": 0}).port == 0
    assert load_settings(env={"WSGATEWAY_PORT": "65535"}).port == 65535


def test_empty_secret_means_unset() -> None:
    settings = load_settings(env={"WSGATEWAY_PUBLISH_TOKEN": "", "WSGATEWAY_JWT_SECRET": ""})
    assert settings.publish_token is None
    assert settings.jwt_secret is None


# -- bad values -------------------------------------------------------------------------------


def assert_names(error: SettingsError, setting: str, value: object) -> None:
    assert error.setting == setting
    assert error.value == value
    text = str(error)
    assert setting in text
    assert repr(value) in text
    assert text.startswith(f"bad setting {setting}={value!r}: ")


@pytest.mark.parametrize(
    "value",
    ["abc", "", "80.5", "-1", "65536", "0x50", "1e3", "99999999999999999999"],
    ids=["word", "empty", "float", "negative", "too-big", "hex", "exponent", "huge"],
)
def test_bad_port_strings_from_env(value: str) -> None:
    error = settings_error(env={"WSGATEWAY_PORT": value})
    assert_names(error, "port", value)
    assert "expected an integer from 0 to 65535" in str(error)


@pytest.mark.parametrize(
    ("toml", "value"),
    [
        pytest.param("port = true", True, id="bool"),
        pytest.param("port = 8080.0", 8080.0, id="float"),
        pytest.param("port = 70000", 70000, id="out-of-range"),
        pytest.param("port = -5", -5, id="negative"),
        pytest.param("port = [8080]", [8080], id="list"),
    ],
)
def test_bad_port_values_from_toml(tmp_path: Path, toml: str, value: object) -> None:
    error = settings_error(config_file=write_toml(tmp_path, toml + "\n"))
    assert_names(error, "port", value)


def test_bad_port_flag() -> None:
    assert_names(settings_error(flags={"port": "http"}), "port", "http")


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        pytest.param("connections_per_minute", 0, "from 1 to 2147483647", id="cpm-zero"),
        pytest.param("messages_per_second", -1, "from 1 to 2147483647", id="mps-negative"),
        pytest.param("max_connections", 2**31, "from 1 to 2147483647", id="maxconn-too-big"),
        pytest.param("max_connections_per_ip", 0, "from 1 to 2147483647", id="per-ip-zero"),
        pytest.param("max_topics", True, "from 1 to 2147483647", id="topics-bool"),
        pytest.param("max_message_size", 127, "from 128 to 2147483647", id="size-too-small"),
        pytest.param("max_outbox_bytes", 1023, "from 1024 to 2147483647", id="outbox-too-small"),
        pytest.param("max_outbox_bytes", 1.5, "from 1024 to 2147483647", id="outbox-float"),
        pytest.param("heartbeat", 0, "number from 0.1 to 3600", id="heartbeat-zero"),
        pytest.param("heartbeat", 3601, "number from 0.1 to 3600", id="heartbeat-too-big"),
        pytest.param("heartbeat", False, "number from 0.1 to 3600", id="heartbeat-bool"),
        pytest.param("heartbeat", "soon", "number from 0.1 to 3600", id="heartbeat-word"),
        pytest.param("heartbeat", "nan", "number from 0.1 to 3600", id="heartbeat-nan"),
    ],
)
def test_bad_default_limits_from_toml(
    tmp_path: Path, name: str, value: object, allowed: str
) -> None:
    if isinstance(value, bool):
        literal = "true" if value else "false"
    else:
        literal = f'"{value}"' if isinstance(value, str) else repr(value)
    path = write_toml(tmp_path, f"[defaults]\n{name} = {literal}\n")
    error = settings_error(config_file=path)
    assert_names(error, name, value)
    assert allowed in str(error)


@pytest.mark.parametrize(
    ("variable", "setting", "value"),
    [
        pytest.param("WSGATEWAY_MESSAGES_PER_SECOND", "messages_per_second", "0", id="mps-zero"),
        pytest.param("WSGATEWAY_MAX_TOPICS", "max_topics", "ten", id="topics-word"),
        pytest.param("WSGATEWAY_HEARTBEAT", "heartbeat", "-1", id="heartbeat-negative"),
        pytest.param("WSGATEWAY_CONNECTIONS_PER_MINUTE", "connections_per_minute", "", id="empty"),
    ],
)
def test_bad_limits_from_env(variable: str, setting: str, value: str) -> None:
    assert_names(settings_error(env={variable: value}), setting, value)


def test_bad_channel_override_names_the_channel_and_limit(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[channel.ticker]\nmax_topics = 0\n")
    assert_names(settings_error(config_file=path), "channel.ticker.max_topics", 0)


def test_bad_channels_table_override_names_the_channel_and_limit(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[channels.ticker]\nmax_message_size = 5\n")
    error = settings_error(config_file=path)
    assert error.value == 5
    assert "ticker.max_message_size=5" in str(error)


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'hots = "0.0.0.0"\n')
    error = settings_error(config_file=path)
    assert_names(error, "hots", "0.0.0.0")
    assert "unknown key" in str(error)


def test_channel_key_that_is_not_a_table_is_unknown(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'channel = "ticker"\n')
    assert_names(settings_error(config_file=path), "channel", "ticker")


@pytest.mark.parametrize(
    ("toml", "setting", "value"),
    [
        pytest.param("[defaults]\nmax_topic = 5\n", "defaults.max_topic", 5, id="defaults"),
        pytest.param(
            "[channel.ticker]\nburst = 5\n", "channel.ticker.burst", 5, id="channel-table"
        ),
        pytest.param(
            "[channels.trades]\nrate = 5\n", "channels.trades.rate", 5, id="channels-table"
        ),
    ],
)
def test_unknown_limit_name(tmp_path: Path, toml: str, setting: str, value: object) -> None:
    error = settings_error(config_file=write_toml(tmp_path, toml))
    assert_names(error, setting, value)
    assert "unknown limit; allowed: " + ", ".join(LIMIT_NAMES) in str(error)


def test_defaults_that_is_not_a_table(tmp_path: Path) -> None:
    error = settings_error(config_file=write_toml(tmp_path, "defaults = 5\n"))
    assert_names(error, "defaults", 5)


def test_channel_override_that_is_not_a_table(tmp_path: Path) -> None:
    error = settings_error(config_file=write_toml(tmp_path, "[channel]\nticker = 5\n"))
    assert_names(error, "channel.ticker", 5)


@pytest.mark.parametrize(
    "variable", ["WSGATEWAY_PROT", "WSGATEWAY_DEMO", "WSGATEWAY_", "WSGATEWAY_DEFAULTS"]
)
def test_unknown_wsgateway_variable(variable: str) -> None:
    error = settings_error(env={variable: "1"})
    assert_names(error, variable, "1")
    assert "unknown WSGATEWAY_* variable" in str(error)


def test_override_for_unconfigured_channel(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'channels = ["ticker"]\n\n[channel.trades]\nmax_topics = 5\n')
    error = settings_error(config_file=path)
    assert error.setting == "channel.trades"
    assert "channel.trades" in str(error)
    assert "not a configured channel; configured: ticker" in str(error)


def test_channels_table_override_for_unknown_channel(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[channels.options]\nmax_topics = 5\n")
    error = settings_error(config_file=path)
    assert "options" in str(error)
    assert "not a configured channel" in str(error)


@pytest.mark.parametrize(
    ("channels", "bad"),
    [
        pytest.param("Ticker", "Ticker", id="uppercase"),
        pytest.param("1market", "1market", id="leading-digit"),
        pytest.param("ticker,", "", id="empty-name"),
        pytest.param("tick er", "tick er", id="space"),
        pytest.param("a" * 33, "a" * 33, id="too-long"),
        pytest.param("ticker,../etc", "../etc", id="path"),
    ],
)
def test_bad_channel_names_from_env(channels: str, bad: str) -> None:
    error = settings_error(env={"WSGATEWAY_CHANNELS": channels})
    assert_names(error, "channels", bad)
    assert "1-32 characters of a-z 0-9 _ -" in str(error)


def test_longest_channel_name_is_accepted() -> None:
    name = "a" * 32
    assert load_settings(env={"WSGATEWAY_CHANNELS": name}).channels == (name,)


@pytest.mark.parametrize(
    ("toml", "value"),
    [
        pytest.param("channels = []", [], id="empty-list"),
        pytest.param("channels = 5", 5, id="number"),
    ],
)
def test_channel_list_that_is_not_a_non_empty_list(
    tmp_path: Path, toml: str, value: object
) -> None:
    error = settings_error(config_file=write_toml(tmp_path, toml + "\n"))
    assert_names(error, "channels", value)


def test_non_string_channel_name_in_toml(tmp_path: Path) -> None:
    error = settings_error(config_file=write_toml(tmp_path, 'channels = ["ticker", 7]\n'))
    assert error.setting == "channels"
    assert "channels='7'" in str(error)


def test_duplicate_channels(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'channels = ["ticker", "trades", "ticker"]\n')
    error = settings_error(config_file=path)
    assert_names(error, "channels", ["ticker", "trades", "ticker"])
    assert "unique" in str(error)


def test_duplicate_channels_from_env_after_stripping() -> None:
    error = settings_error(env={"WSGATEWAY_CHANNELS": "ticker, ticker"})
    assert_names(error, "channels", "ticker, ticker")


# Minimum lengths: publish_token 16; jwt_secret 32 (an HS256 key shorter than the hash is
# weak, RFC 7518 3.2, and PyJWT warns on every check with it).
SECRET_MINIMUM = {"publish_token": 16, "jwt_secret": 32}


@pytest.mark.parametrize("setting", ["publish_token", "jwt_secret"])
@pytest.mark.parametrize(
    "secret",
    ["s3cr3t!", "Q7", "Q7Z" * 5],
    ids=["seven-chars", "two-chars", "fifteen-chars"],
)
def test_short_secret_is_refused_without_showing_it(setting: str, secret: str) -> None:
    error = settings_error(flags={setting: secret})
    assert error.setting == setting
    assert error.value == "***"
    assert secret not in str(error)
    assert str(error) == (
        f"bad setting {setting}='***': "
        f"expected a string of at least {SECRET_MINIMUM[setting]} characters"
    )


@pytest.mark.parametrize("setting", ["publish_token", "jwt_secret"])
def test_secret_one_short_of_the_minimum_is_refused(setting: str) -> None:
    secret = "K9w" * 11
    secret = secret[: SECRET_MINIMUM[setting] - 1]
    error = settings_error(env={f"WSGATEWAY_{setting.upper()}": secret})
    assert error.setting == setting
    assert secret not in str(error)


@pytest.mark.parametrize("setting", ["publish_token", "jwt_secret"])
def test_secret_of_minimum_length_is_accepted(setting: str) -> None:
    secret = ("K9w" * 11)[: SECRET_MINIMUM[setting]]
    assert getattr(load_settings(flags={setting: secret}), setting) == secret


def test_non_string_secret_from_toml_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "publish_token = 12345678901234567890\n")
    error = settings_error(config_file=path)
    assert error.setting == "publish_token"
    assert "12345678901234567890" not in str(error)


def test_secret_error_from_toml_hides_the_value(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'jwt_secret = "too-short-jwt-secret"\n')
    error = settings_error(config_file=path)
    assert error.setting == "jwt_secret"
    assert "too-short-jwt-secret" not in str(error)


@pytest.mark.parametrize("level", ["verbose", "TRACE", "critical"])
def test_bad_log_level(level: str) -> None:
    error = settings_error(env={"WSGATEWAY_LOG_LEVEL": level})
    assert error.setting == "log_level"
    assert level.upper() in str(error)
    assert "allowed: DEBUG, INFO, WARNING, ERROR" in str(error)


def test_empty_host_is_refused() -> None:
    assert_names(settings_error(env={"WSGATEWAY_HOST": ""}), "host", "")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    error = settings_error(config_file=path)
    assert_names(error, "config", str(path))
    assert "cannot read the file" in str(error)


def test_config_file_that_is_a_directory(tmp_path: Path) -> None:
    error = settings_error(config_file=tmp_path)
    assert_names(error, "config", str(tmp_path))


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = = 8080\n")
    error = settings_error(config_file=path)
    assert_names(error, "config", str(path))
    assert "not valid TOML" in str(error)


def test_channel_list_and_channels_table_together_is_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'channels = ["ticker"]\n\n[channels.ticker]\nmax_topics = 5\n')
    error = settings_error(config_file=path)
    assert error.setting == "config"
    assert "not valid TOML" in str(error)


@pytest.mark.parametrize("broker", ["kafka://x", "memory", "redis", "http://r:6379"])
def test_unknown_broker_schemes_are_refused(broker: str) -> None:
    error = settings_error(flags={"broker": broker})
    assert_names(error, "broker", broker)
    assert "memory://" in str(error) and "redis://" in str(error)


@pytest.mark.parametrize(
    "broker",
    ["redis://localhost:6379/0", "rediss://cache:6380/1", "unix:///run/redis.sock", "memory://"],
)
def test_memory_and_redis_brokers_are_accepted(broker: str) -> None:
    assert load_settings(env={"WSGATEWAY_BROKER": broker}).broker == broker


def test_several_workers_need_a_shared_broker() -> None:
    error = settings_error(flags={"workers": 2})
    assert error.setting == "workers"
    assert "shared broker" in str(error)
    settings = load_settings(flags={"workers": 2, "broker": "redis://r:6379/0"})
    assert settings.workers == 2


# -- secrets stay out of repr ----------------------------------------------------------------


def test_repr_hides_secrets() -> None:
    settings = load_settings(flags={"publish_token": PUBLISH_TOKEN, "jwt_secret": JWT_SECRET})
    text = repr(settings)
    assert PUBLISH_TOKEN not in text
    assert JWT_SECRET not in text
    assert "publish_token='***'" in text
    assert "jwt_secret='***'" in text
    assert str(settings) == text
    assert "port=8080" in text


def test_repr_shows_unset_secrets_as_none() -> None:
    text = repr(Settings())
    assert "publish_token=None" in text
    assert "jwt_secret=None" in text


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


# -- allowed_origins --------------------------------------------------------------------------


def test_allowed_origins_default_admits_every_origin() -> None:
    assert load_settings().allowed_origins == ()


def test_allowed_origins_from_toml_are_normalised(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'allowed_origins = ["https://App.Example.com/", "http://localhost:3000",'
        ' "https://*.desk.example.com", "null", "https://app.example.com"]\n',
    )
    assert load_settings(config_file=path).allowed_origins == (
        "https://app.example.com",
        "http://localhost:3000",
        "https://*.desk.example.com",
        "null",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "https://a.example.com, https://b.example.com:8443",
            ("https://a.example.com", "https://b.example.com:8443"),
        ),
        ("https://a.example.com,", ("https://a.example.com",)),
        ("", ()),
    ],
)
def test_allowed_origins_from_env_are_comma_separated(
    value: str, expected: tuple[str, ...]
) -> None:
    assert load_settings(env={"WSGATEWAY_ALLOWED_ORIGINS": value}).allowed_origins == expected


@pytest.mark.parametrize(
    "origin",
    [
        "example.com",  # no scheme
        "ftp://example.com",
        "https://example.com/app",  # a path is never part of an origin
        "https://example.com?x=1",
        "*",
        "https://*",
        "https://a.*.example.com",
        "https://example.com:port",
        "",
    ],
)
def test_bad_allowed_origins_name_the_setting(tmp_path: Path, origin: str) -> None:
    path = write_toml(tmp_path, f'allowed_origins = ["https://ok.example.com", "{origin}"]\n')
    assert_names(settings_error(config_file=path), "allowed_origins", origin)


def test_allowed_origins_must_be_a_list(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "allowed_origins = 3\n")
    assert_names(settings_error(config_file=path), "allowed_origins", 3)


# -- trusted_proxies --------------------------------------------------------------------------


def test_trusted_proxies_default_trusts_no_one() -> None:
    assert load_settings().trusted_proxies == ()


def test_trusted_proxies_from_toml_are_normalised(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "FD00::/8", " 192.168.1.10 ", '
        '"10.0.0.0/8"]\n',
    )
    assert load_settings(config_file=path).trusted_proxies == (
        "10.0.0.0/8",
        "127.0.0.1/32",
        "fd00::/8",
        "192.168.1.10/32",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1/32",)),
        ("10.0.0.0/8, ::1", ("10.0.0.0/8", "::1/128")),
        ("10.0.0.0/8,", ("10.0.0.0/8",)),
        ("10.0.0.0/8,,::1", ("10.0.0.0/8", "::1/128")),
        ("", ()),
    ],
)
def test_trusted_proxies_from_env_are_comma_separated(
    value: str, expected: tuple[str, ...]
) -> None:
    assert load_settings(env={"WSGATEWAY_TRUSTED_PROXIES": value}).trusted_proxies == expected


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.5/8",  # host bits set: a typo for 10.0.0.5 or 10.0.0.0/8?
        "10.0.0.0/33",
        "proxy.internal",  # names are not resolved: an address or a network
        "300.1.1.1",
        "10.0.0.*",
        "",
    ],
)
def test_bad_trusted_proxies_name_the_setting(tmp_path: Path, entry: str) -> None:
    path = write_toml(tmp_path, f'trusted_proxies = ["127.0.0.1", "{entry}"]\n')
    error = settings_error(config_file=path)
    assert_names(error, "trusted_proxies", entry)
    assert "expected IP addresses or networks" in str(error)


def test_trusted_proxies_must_be_a_list(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "trusted_proxies = 3\n")
    error = settings_error(config_file=path)
    assert_names(error, "trusted_proxies", 3)
    assert str(error).endswith(": expected a list of addresses or networks")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("WSGATEWAY_HANDSHAKES_PER_SECOND", "0"),
        ("WSGATEWAY_HANDSHAKE_BURST", "0"),
        ("WSGATEWAY_HANDSHAKE_BURST", "1.5"),
    ],
)
def test_handshake_budget_must_be_a_positive_integer(env: str, value: str) -> None:
    error = settings_error(env={env: value})
    assert error.setting == env[len("WSGATEWAY_") :].lower()
    assert "expected an integer from 1 to 2147483647" in str(error)


def test_handshake_budget_per_channel(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, "[defaults]\nhandshakes_per_second = 200\n[channel.user]\nhandshake_burst = 50\n"
    )
    settings = load_settings(config_file=path)
    assert settings.limits_for("ticker").handshakes_per_second == 200
    assert settings.limits_for("user").handshake_burst == 50
    assert settings.limits_for("user").handshakes_per_second == 200


# -- token rules --------------------------------------------------------------------------------


def test_token_rules_are_off_by_default() -> None:
    settings = load_settings()
    assert settings.jwt_audience is None
    assert settings.jwt_issuer is None
    assert settings.max_token_lifetime is None


def test_token_rules_from_env() -> None:
    settings = load_settings(
        env={
            "WSGATEWAY_JWT_AUDIENCE": "wsgateway",
            "WSGATEWAY_JWT_ISSUER": "https://auth.example.com",
            "WSGATEWAY_MAX_TOKEN_LIFETIME": "900",
        }
    )
    assert settings.jwt_audience == "wsgateway"
    assert settings.jwt_issuer == "https://auth.example.com"
    assert settings.max_token_lifetime == 900


def test_token_rules_from_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, 'jwt_audience = "md"\njwt_issuer = "auth"\nmax_token_lifetime = 3600\n'
    )
    settings = load_settings(config_file=path)
    assert (settings.jwt_audience, settings.jwt_issuer, settings.max_token_lifetime) == (
        "md",
        "auth",
        3600,
    )


def test_empty_token_rules_mean_unset() -> None:
    settings = load_settings(
        env={
            "WSGATEWAY_JWT_AUDIENCE": "",
            "WSGATEWAY_JWT_ISSUER": "",
            "WSGATEWAY_MAX_TOKEN_LIFETIME": "",
        }
    )
    assert (settings.jwt_audience, settings.jwt_issuer, settings.max_token_lifetime) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "31536001", "nan", "inf", "soon"])
def test_bad_max_token_lifetime(value: str) -> None:
    error = settings_error(env={"WSGATEWAY_MAX_TOKEN_LIFETIME": value})
    assert_names(error, "max_token_lifetime", value)
    assert "expected an integer from 1 to 31536000" in str(error)


def test_max_token_lifetime_of_a_year_is_accepted() -> None:
    settings = load_settings(env={"WSGATEWAY_MAX_TOKEN_LIFETIME": "31536000"})
    assert settings.max_token_lifetime == 365 * 86400


@pytest.mark.parametrize("setting", ["jwt_audience", "jwt_issuer"])
def test_token_rule_that_is_not_a_string(tmp_path: Path, setting: str) -> None:
    path = write_toml(tmp_path, f"{setting} = 5\n")
    assert_names(settings_error(config_file=path), setting, 5)


# -- the listener: header_timeout, max_pending_per_ip, metrics_host/metrics_port ----------------


def test_listener_defaults() -> None:
    settings = load_settings()
    assert settings.header_timeout == 10.0
    assert settings.max_pending_per_ip == 256
    assert settings.metrics_host is None
    assert settings.metrics_port is None


def test_listener_settings_from_env() -> None:
    settings = load_settings(
        env={
            "WSGATEWAY_HEADER_TIMEOUT": "2.5",
            "WSGATEWAY_MAX_PENDING_PER_IP": "10",
            "WSGATEWAY_METRICS_HOST": "10.0.0.5",
            "WSGATEWAY_METRICS_PORT": "9100",
        }
    )
    assert settings.header_timeout == 2.5
    assert settings.max_pending_per_ip == 10
    assert (settings.metrics_host, settings.metrics_port) == ("10.0.0.5", 9100)


def test_listener_settings_from_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "header_timeout = 3\nmax_pending_per_ip = 1\nmetrics_port = 0\n")
    settings = load_settings(config_file=path)
    assert settings.header_timeout == 3.0
    assert settings.max_pending_per_ip == 1
    assert (settings.metrics_host, settings.metrics_port) == (None, 0)


def test_empty_metrics_port_means_no_metrics_listener() -> None:
    settings = load_settings(env={"WSGATEWAY_METRICS_PORT": "", "WSGATEWAY_METRICS_HOST": ""})
    assert (settings.metrics_host, settings.metrics_port) == (None, None)


@pytest.mark.parametrize(
    ("variable", "setting", "value", "allowed"),
    [
        ("HEADER_TIMEOUT", "header_timeout", "0", "expected a number from 0.5 to 3600"),
        ("HEADER_TIMEOUT", "header_timeout", "3601", "expected a number from 0.5 to 3600"),
        ("HEADER_TIMEOUT", "header_timeout", "soon", "expected a number from 0.5 to 3600"),
        ("MAX_PENDING_PER_IP", "max_pending_per_ip", "0", "expected an integer from 1 to"),
        ("MAX_PENDING_PER_IP", "max_pending_per_ip", "2.5", "expected an integer from 1 to"),
        ("METRICS_PORT", "metrics_port", "65536", "expected an integer from 0 to 65535"),
        ("METRICS_PORT", "metrics_port", "metrics", "expected an integer from 0 to 65535"),
    ],
)
def test_bad_listener_settings(variable: str, setting: str, value: str, allowed: str) -> None:
    error = settings_error(env={f"WSGATEWAY_{variable}": value})
    assert_names(error, setting, value)
    assert allowed in str(error)


def test_metrics_port_must_differ_from_port_on_the_same_host() -> None:
    error = settings_error(env={"WSGATEWAY_PORT": "8080", "WSGATEWAY_METRICS_PORT": "8080"})
    assert_names(error, "metrics_port", 8080)
    assert "must differ from port" in str(error)
    other_host = load_settings(
        env={
            "WSGATEWAY_PORT": "8080",
            "WSGATEWAY_METRICS_PORT": "8080",
            "WSGATEWAY_METRICS_HOST": "10.0.0.5",
        }
    )
    assert other_host.metrics_port == 8080


def test_metrics_host_without_metrics_port_is_refused() -> None:
    error = settings_error(env={"WSGATEWAY_METRICS_HOST": "10.0.0.5"})
    assert_names(error, "metrics_host", "10.0.0.5")
    assert str(error) == "bad setting metrics_host='10.0.0.5': set metrics_port too"


def test_metrics_port_on_the_public_host_and_port_is_refused_even_when_named() -> None:
    env = {"WSGATEWAY_HOST": "10.0.0.5", "WSGATEWAY_PORT": "8080"}
    error = settings_error(
        env={**env, "WSGATEWAY_METRICS_HOST": "10.0.0.5", "WSGATEWAY_METRICS_PORT": "8080"}
    )
    assert str(error) == ("bad setting metrics_port=8080: must differ from port on the same host")
    one = settings_error(env={"WSGATEWAY_PORT": "1", "WSGATEWAY_METRICS_PORT": "1"})
    assert_names(one, "metrics_port", 1)


def test_port_zero_for_both_listeners_is_two_ephemeral_ports() -> None:
    settings = load_settings(env={"WSGATEWAY_PORT": "0", "WSGATEWAY_METRICS_PORT": "0"})
    assert (settings.port, settings.metrics_port) == (0, 0)


def test_metrics_host_must_be_a_string(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "metrics_host = 5\nmetrics_port = 9100\n")
    assert_names(settings_error(config_file=path), "metrics_host", 5)


@pytest.mark.parametrize(("value", "accepted"), [(2**31 - 1, True), (2**31, False)])
def test_max_pending_per_ip_is_at_most_2_to_the_31_minus_1(value: int, accepted: bool) -> None:
    env = {"WSGATEWAY_MAX_PENDING_PER_IP": str(value)}
    if accepted:
        assert load_settings(env=env).max_pending_per_ip == value
    else:
        assert str(settings_error(env=env)).endswith("expected an integer from 1 to 2147483647")


# -- close_timeout ------------------------------------------------------------------------------


def test_close_timeout_defaults_to_5_seconds_and_is_read_from_env_and_toml(
    tmp_path: Path,
) -> None:
    assert load_settings().close_timeout == 5.0
    assert load_settings(env={"WSGATEWAY_CLOSE_TIMEOUT": "0.5"}).close_timeout == 0.5
    path = write_toml(tmp_path, "close_timeout = 60\n")
    assert load_settings(config_file=path).close_timeout == 60.0


@pytest.mark.parametrize("value", ["0", "0.09", "60.5", "-1", "soon", ""])
def test_close_timeout_refuses_values_outside_0_1_to_60_seconds(value: str) -> None:
    error = settings_error(env={"WSGATEWAY_CLOSE_TIMEOUT": value})
    assert error.setting == "close_timeout"
    assert str(error) == f"bad setting close_timeout={value!r}: expected a number from 0.1 to 60"


# -- an environment holds more than our variables -------------------------------------------------

MIXED_ENV = [
    ("PATH", "/usr/local/bin:/usr/bin"),
    ("WSGATEWAY_PORT", "9001"),
    ("HOME", "/root"),
    ("WSGATEWAY_CONFIG", "/etc/wsgateway.toml"),  # the CLI's to read, skipped here
    ("wsgateway_port", "1"),  # names are case-sensitive: not ours
    ("MY_WSGATEWAY_PORT", "2"),  # the prefix must start the name
    ("WSGATEWAYPORT", "3"),
    ("WSGATEWAY_MAX_TOPICS", "7"),
    ("LANG", "C.UTF-8"),
    ("WSGATEWAY_HOST", "0.0.0.0"),
    ("TERM", "xterm"),
]


@pytest.mark.parametrize(
    "order",
    ["as_listed", "reversed", "sorted", "ours_last"],
)
def test_env_mixing_other_variables_reads_every_wsgateway_one(order: str) -> None:
    items = {
        "as_listed": MIXED_ENV,
        "reversed": MIXED_ENV[::-1],
        "sorted": sorted(MIXED_ENV),
        "ours_last": sorted(MIXED_ENV, key=lambda item: item[0].startswith("WSGATEWAY_")),
    }[order]
    settings = load_settings(env=dict(items))
    assert (settings.port, settings.host, settings.defaults.max_topics) == (9001, "0.0.0.0", 7)
    assert dataclasses.replace(settings, port=8080, host="127.0.0.1") == dataclasses.replace(
        Settings(), defaults=dataclasses.replace(Limits(), max_topics=7)
    )


def test_env_with_only_other_variables_gives_defaults() -> None:
    others = {name: value for name, value in MIXED_ENV if not name.startswith("WSGATEWAY_")}
    assert len(others) == 7
    assert load_settings(env=others) == Settings()


# -- every refusal names the setting, the value and what is allowed, exactly ----------------------

CONFIGURED = "market, ticker, orderbook, trades, user"


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        pytest.param(
            {"flags": {"nope": 1}},
            "bad setting nope=1: not a setting that can be given as a flag",
            id="unknown-flag",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_NOPE": "1"}},
            "bad setting WSGATEWAY_NOPE='1': unknown WSGATEWAY_* variable",
            id="unknown-env",
        ),
        pytest.param(
            {"toml": "defaults = 5\n"},
            "bad setting defaults=5: expected a table of limits",
            id="defaults-not-a-table",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_BROKER": ""}},
            "bad setting broker='': expected a non-empty string",
            id="empty-broker",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_BROKER": "nats://localhost"}},
            "bad setting broker='nats://localhost': allowed: memory:// (one process) or "
            "redis://[:password@]host:port/db (rediss:// with TLS, unix:///path/to/redis.sock)",
            id="unknown-broker",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_LOG_LEVEL": ""}},
            "bad setting log_level='': expected a non-empty string",
            id="empty-log-level",
        ),
        pytest.param(
            {"toml": "[channel.nope]\nmax_topics = 3\n"},
            "bad setting channel.nope={'max_topics': 3}: not a configured channel; configured: "
            + CONFIGURED,
            id="limits-for-an-unknown-channel",
        ),
        pytest.param(
            {"toml": "channels = []\n"},
            "bad setting channels=[]: expected a non-empty list of channel names",
            id="no-channels",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_CHANNELS": "ticker,Bad Name"}},
            "bad setting channels='Bad Name': channel names are 1-32 characters of a-z 0-9 _ - "
            "starting with a letter",
            id="bad-channel-name",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_CHANNELS": "ticker,ticker"}},
            "bad setting channels='ticker,ticker': channel names must be unique",
            id="duplicate-channels",
        ),
        pytest.param(
            {"toml": "allowed_origins = 5\n"},
            "bad setting allowed_origins=5: expected a list of origins",
            id="origins-not-a-list",
        ),
        pytest.param(
            {"env": {"WSGATEWAY_ALLOWED_ORIGINS": "https://app.example.com/path"}},
            "bad setting allowed_origins='https://app.example.com/path': expected origins like "
            "https://app.example.com, https://*.example.com:8443 or null (scheme, host and port "
            "only, no path)",
            id="origin-with-a-path",
        ),
    ],
)
def test_refusals_say_exactly_what_is_allowed(
    tmp_path: Path, layers: dict[str, Any], message: str
) -> None:
    if "toml" in layers:
        layers = {"config_file": write_toml(tmp_path, layers["toml"])}
    assert str(settings_error(**layers)) == message


def test_a_memory_broker_url_is_kept_as_given() -> None:
    assert load_settings(env={"WSGATEWAY_BROKER": "memory://gateway-1"}).broker == (
        "memory://gateway-1"
    )


def test_empty_entries_between_origins_are_skipped() -> None:
    settings = load_settings(
        env={"WSGATEWAY_ALLOWED_ORIGINS": "https://a.example.com,, ,https://b.example.com,"}
    )
    assert settings.allowed_origins == ("https://a.example.com", "https://b.example.com")


def test_repr_shows_every_setting_with_secrets_masked() -> None:
    settings = Settings(publish_token=PUBLISH_TOKEN, jwt_secret=JWT_SECRET)
    shown = repr(settings)
    assert shown.startswith(
        "Settings(host='127.0.0.1', port=8080, broker='memory://', publish_token='***', "
        "jwt_secret='***', channels=('market', 'ticker', 'orderbook', 'trades', 'user'), "
    )
    assert shown.endswith(
        ", overrides={}, demo=False, log_level='INFO', header_timeout=10.0, "
        "max_pending_per_ip=256, metrics_host=None, metrics_port=None, close_timeout=5.0, "
        "drain_seconds=10.0, workers=1)"
    )
    assert PUBLISH_TOKEN not in shown and JWT_SECRET not in shown


# -- topic modes (issue 9) --------------------------------------------------------------------


def test_modes_default_by_channel_name_and_can_be_set_per_channel(tmp_path: Path) -> None:
    settings = load_settings(
        config_file=write_toml(
            tmp_path, '[defaults]\nmax_book_levels = 20\n[channel.ticker]\nmode = "stream"\n'
        ),
        env={"WSGATEWAY_CHECKSUM": "false", "WSGATEWAY_POSITION_HEARTBEAT": "5"},
    )
    modes = {name: settings.limits_for(name).mode_for(name) for name in settings.channels}
    assert modes == {
        "market": "last",
        "ticker": "stream",
        "orderbook": "book",
        "trades": "stream",
        "user": "stream",
    }
    orderbook = settings.limits_for("orderbook")
    assert (orderbook.max_book_levels, orderbook.checksum, orderbook.position_heartbeat) == (
        20,
        False,
        5,
    )


@pytest.mark.parametrize(
    ("env", "setting", "value", "allowed"),
    [
        ({"WSGATEWAY_MODE": "fast"}, "mode", "fast", "allowed: auto, stream, last, book"),
        ({"WSGATEWAY_CHECKSUM": "maybe"}, "checksum", "maybe", "expected true or false"),
        ({"WSGATEWAY_MAX_BOOK_LEVELS": "9"}, "max_book_levels", "9", "from 10 to"),
        ({"WSGATEWAY_POSITION_HEARTBEAT": "3601"}, "position_heartbeat", "3601", "0 to 3600"),
    ],
)
def test_bad_mode_settings_name_the_setting(
    env: dict[str, str], setting: str, value: str, allowed: str
) -> None:
    error = settings_error(env=env)
    assert (error.setting, error.value) == (setting, value)
    assert allowed in error.allowed


def test_the_user_channel_is_never_anything_but_a_stream(tmp_path: Path) -> None:
    error = settings_error(config_file=write_toml(tmp_path, '[defaults]\nmode = "last"\n'))
    assert (error.setting, error.value) == ("channel.user.mode", "last")
    assert "never conflated or replaced: only stream" in error.allowed
    # Without the user channel, a last default is fine.
    settings = load_settings(
        config_file=write_toml(tmp_path, 'channels = ["ticker"]\n[defaults]\nmode = "last"\n')
    )
    assert settings.limits_for("ticker").mode_for("ticker") == "last"
