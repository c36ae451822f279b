"""config init / config check / serve --set: TOML generated from the Settings definitions."""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from pathlib import Path

import pytest

from wsgateway import configfile
from wsgateway.errors import SettingsError, UsageError
from wsgateway.settings import LIMIT_NAMES, TOP_LEVEL_KEYS, Limits, Settings, load_settings

SECRETS = {"publish_token": "p" * 20, "jwt_secret": "j" * 40}


def test_every_setting_has_a_description_and_no_description_is_stale() -> None:
    assert set(configfile.DESCRIPTIONS) == set(TOP_LEVEL_KEYS) | set(LIMIT_NAMES)
    unset = {f.name for f in dataclasses.fields(Settings) if f.default is None}
    assert set(configfile.EXAMPLES) == unset


def test_the_template_names_every_setting_with_its_default() -> None:
    text = configfile.template(SECRETS)
    defaults = Settings()
    for name in TOP_LEVEL_KEYS:
        value = getattr(defaults, name)
        if name in SECRETS:
            assert f'\n{name} = "{SECRETS[name]}"\n' in text
        elif value is None:
            assert f"e.g.: {name} = " in text
        else:
            assert f"\n# {name} = {configfile.toml_value(value)}\n" in text
    for f in dataclasses.fields(Limits):
        assert f"\n# {f.name} = {configfile.toml_value(f.default)}\n" in text
    for line in text.splitlines():
        assert len(line) <= 100, line


def test_the_template_loads_back_as_the_defaults_plus_the_secrets(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(configfile.template())
    loaded = load_settings(config_file=path)
    document = tomllib.loads(path.read_text())
    assert len(document["jwt_secret"]) >= 32 and len(document["publish_token"]) >= 16
    assert loaded == dataclasses.replace(
        Settings(), jwt_secret=document["jwt_secret"], publish_token=document["publish_token"]
    )
    # Each uncommented line loads too: the commented defaults are valid TOML for the loader.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line and "e.g." not in line else line
        for line in path.read_text().splitlines()
        if not line.startswith("# [channel") and "max_outbox_bytes = 262144" not in line
    )
    path.write_text(uncommented)
    assert load_settings(config_file=path) == loaded


def test_secrets_are_fresh_each_time() -> None:
    assert configfile.generated_secrets() != configfile.generated_secrets()


def test_effective_settings_mask_secrets_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        'jwt_secret = "' + "s" * 40 + '"\nport = 9001\n[defaults]\nmax_topics = 7\n'
        "[channel.ticker]\nheartbeat = 5\n"
    )
    settings = load_settings(config_file=path)
    text = configfile.effective(settings)
    assert 'jwt_secret = "****"' in text and "s" * 40 not in text
    assert "# publish_token is unset" in text
    shown = tomllib.loads(text)
    assert shown["port"] == 9001 and shown["defaults"]["max_topics"] == 7
    assert shown["channel"]["ticker"] == {**shown["defaults"], "heartbeat": 5.0}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (3, "3"),
        (2.5, "2.5"),
        ('a "b" \\ c\n', '"a \\"b\\" \\\\ c\\u000a"'),
        (("x", "y"), '["x", "y"]'),
        ((), "[]"),
    ],
)
def test_toml_values(value: object, text: str) -> None:
    assert configfile.toml_value(value) == text
    assert tomllib.loads(f"v = {text}")["v"] == (list(value) if isinstance(value, tuple) else value)


def test_assignments_are_shaped_like_the_file() -> None:
    document = configfile.parse_assignments(
        [
            "port=9000",
            "log_level=debug",
            "broker=redis://127.0.0.1:6379/0",
            "max_topics=50",
            "defaults.heartbeat=2.5",
            "channel.ticker.max_connections=100",
            "channels.orderbook.max_topics=3",
            'channels=["ticker", "orderbook"]',
            "jwt_audience=",
            'publish_token="0123456789abcdef"',
        ]
    )
    assert document == {
        "port": 9000,
        "log_level": "debug",
        "broker": "redis://127.0.0.1:6379/0",
        "defaults": {"max_topics": 50, "heartbeat": 2.5},
        "channel": {"ticker": {"max_connections": 100}, "orderbook": {"max_topics": 3}},
        "channels": ["ticker", "orderbook"],
        "jwt_audience": "",
        "publish_token": "0123456789abcdef",
    }
    settings = load_settings(assignments=document)
    assert settings.port == 9000 and settings.log_level == "DEBUG"
    assert settings.limits_for("ticker").max_connections == 100
    assert settings.limits_for("ticker").max_topics == 50
    assert settings.limits_for("orderbook").max_topics == 3


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["port"], "expected KEY=VALUE"),
        (["=1"], "expected KEY=VALUE"),
        (["a..b=1"], "expected KEY=VALUE"),
        (["x.y=1"], "channel.NAME.LIMIT"),
        (["channel.ticker=1"], "channel.NAME.LIMIT"),
        (["defaults=1", "defaults.max_topics=2"], "not a table"),
    ],
)
def test_bad_assignments_say_what_is_expected(texts: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        configfile.parse_assignments(texts)


def test_the_loader_checks_assignment_names_and_values_and_they_follow_the_file(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingsError, match="unknown key in --set"):
        load_settings(assignments=configfile.parse_assignments(["prot=1"]))
    with pytest.raises(SettingsError, match="max_topics"):
        load_settings(assignments=configfile.parse_assignments(["max_topics=0"]))
    path = tmp_path / "gw.toml"
    path.write_text("port = 9001\n[channel.ticker]\nmax_topics = 5\nheartbeat = 3\n")
    settings = load_settings(
        env={"WSGATEWAY_PORT": "9002"},
        config_file=path,
        assignments=configfile.parse_assignments(["port=9003", "channel.ticker.max_topics=4"]),
        flags={"port": "9004"},
    )
    assert settings.port == 9004
    assert (settings.limits_for("ticker").max_topics, settings.limits_for("ticker").heartbeat) == (
        4,
        3.0,
    )
    settings = load_settings(
        env={"WSGATEWAY_PORT": "9002"},
        config_file=path,
        assignments=configfile.parse_assignments(["port=9003"]),
    )
    assert settings.port == 9003


def test_a_new_file_is_private_and_never_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    configfile.write_new_file(path, "a = 1\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(UsageError, match="exists; pass --force"):
        configfile.write_new_file(path, "a = 2\n")
    assert path.read_text() == "a = 1\n"
    path.chmod(0o644)
    configfile.write_new_file(path, "a = 3\n", force=True)
    assert path.read_text() == "a = 3\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(UsageError, match="cannot write"):
        configfile.write_new_file(tmp_path / "missing" / "gw.toml", "")
