"""The everyday commands by subprocess against real gateway processes: config init/check,
token, serve's flags and --set, subscribe's refusals and closes, --url forms, bench."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.processes import GatewayNode, clean_env
from tests.test_cli import wsgateway

pytestmark = pytest.mark.e2e

JWT_SECRET = "e2e-cli-jwt-secret-0123456789abcdef"
PUBLISH_TOKEN = "e2e-cli-publish-token-42"


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A client command running in the background (the test ends it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "wsgateway", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(env),
    )


def finish(process: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


def subscribed(process: subprocess.Popen[str]) -> None:
    """Wait for the subscribe reply, the first line the command prints."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert json.loads(line)["type"] == "subscribed", line


def test_config_init_check_token_and_the_user_channel(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    made = wsgateway("config", "init", str(path))
    assert made.returncode == 0, made.stderr
    assert f"wrote {path}" in made.stderr and path.stat().st_mode & 0o077 == 0
    again = wsgateway("config", "init", str(path))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    assert wsgateway("config", "init", str(path), "--force").returncode == 0
    document = tomllib.loads(path.read_text())

    check = wsgateway("config", "check", "--config", str(path))
    assert check.returncode == 0, check.stderr
    assert 'jwt_secret = "****"' in check.stdout and 'publish_token = "****"' in check.stdout
    assert document["jwt_secret"] not in check.stdout + check.stderr
    shown = tomllib.loads(check.stdout)
    assert shown["port"] == 8080 and shown["defaults"]["max_topics"] == 100
    # The same loader as serve: the environment counts, a bad value is its one line, exit 2.
    bad = wsgateway(
        "config", "check", env={"WSGATEWAY_CONFIG": str(path), "WSGATEWAY_MAX_TOPICS": "0"}
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert (
        bad.stderr
        == "wsgateway: bad setting max_topics='0': expected an integer from 1 to 2147483647\n"
    )

    # serve's options preview what serve would run with: flags over --set over the file.
    preview = wsgateway(
        "config", "check", "--config", str(path), "--set", "max_topics=7",
        "--set", "channel.ticker.max_topics=3", "--port", "9001", "--set", "port=9002",
    )  # fmt: skip
    assert preview.returncode == 0, preview.stderr
    previewed = tomllib.loads(preview.stdout)
    assert previewed["port"] == 9001 and previewed["defaults"]["max_topics"] == 7
    assert previewed["channel"]["ticker"]["max_topics"] == 3
    unknown = wsgateway("config", "check", "--set", "max_topic=7")
    assert unknown.returncode == 2 and "max_topic" in unknown.stderr

    no_secret = wsgateway("token", "--sub", "alice")
    assert no_secret.returncode == 2 and "no jwt_secret is configured" in no_secret.stderr
    minted = wsgateway("token", "--sub", "alice", "--ttl", "2m", "--config", str(path))
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)

    with GatewayNode("--config", str(path)) as node:
        # The token passes the gateway's own check: the user channel takes it.
        with connect(f"ws://{node.address}/ws/user?token={token}") as ws:
            ws.send('{"type": "subscribe", "topics": ["alice"], "id": 1}')
            assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
        subscriber = start(
            "subscribe", "user", "alice", "--token", token, "--count", "1", "--url", node.http
        )
        subscribed(subscriber)
        published = wsgateway(
            "publish", "user", "alice", '{"note": 1}', "--url", node.http,
            "--token", document["publish_token"],
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        code, out, err = finish(subscriber)
        assert code == 0, err
        assert json.loads(out)["data"] == {"note": 1}


@pytest.fixture
def strict_node(tmp_path: Path) -> Iterator[GatewayNode]:
    """A node whose limits come from a file, --set and flags: max_topics 5 in the file, 1 by
    --set; trades holds one connection; a JWT secret and a publish token by flag."""
    path = tmp_path / "gw.toml"
    path.write_text("port = 1\n[defaults]\nmax_topics = 5\n")
    with GatewayNode(
        "--config", str(path),
        "--set", "max_topics=1",
        "--set", "channel.trades.max_connections=1",
        "--jwt-secret", JWT_SECRET,
        "--publish-token", PUBLISH_TOKEN,
        "--log-level", "warning",
    ) as node:  # fmt: skip
        yield node


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["subscribe", "nope", "X"], "HTTP 404 unknown_channel: "),
        (["subscribe", "user", "alice"], "HTTP 401 unauthorized: "),
        (["subscribe", "ticker", "BTC USD"], "answered the subscribe with invalid_topic: "),
        (["subscribe", "ticker", "A", "B"], "answered the subscribe with too_many_topics: "),
        (["publish", "ticker", "A", "{}"], "answered 401 (Authorization)"),
        (
            ["subscribe", "trades", "A", "--max-rate", "5"],
            'answered the subscribe with bad_message: "max_rate" is for channels in last or book',
        ),
    ],
    ids=[
        "unknown-channel",
        "unauthorized",
        "invalid-topic",
        "too-many-topics",
        "publish-token",
        "max-rate-on-a-stream",
    ],
)
def test_subscribe_ends_with_the_gateways_words(
    strict_node: GatewayNode, args: list[str], expected: str
) -> None:
    code, out, err = finish(start(*args, "--url", strict_node.http))
    assert code == 1, (out, err)
    assert err.startswith("wsgateway: ") and expected in err, err
    assert len(err.splitlines()) == 1


def test_refusals_for_capacity_and_another_users_topic(strict_node: GatewayNode) -> None:
    with connect(f"ws://{strict_node.address}/ws/trades"):
        code, _, err = finish(start("subscribe", "trades", "X", "--url", strict_node.http))
    assert code == 1 and "HTTP 503 capacity: " in err, err
    token = wsgateway("token", "--sub", "alice", env={"WSGATEWAY_JWT_SECRET": JWT_SECRET})
    assert token.returncode == 0, token.stderr
    code, _, err = finish(
        start(
            "subscribe", "user", "bob", "--token", token.stdout.strip(), "--url", strict_node.http
        )
    )
    assert code == 1 and "answered the subscribe with forbidden_topic" in err, err
    assert token.stdout.strip() not in err


@pytest.mark.parametrize(
    ("subscribe_url", "publish_url"),
    [
        ("ws://{a}", "http://{a}/api/publish"),
        ("ws://{a}/ws/ticker/", "ws://{a}/ws/ticker"),
        ("http://{a}/api/publish", "{a}"),
    ],
)
def test_url_forms(strict_node: GatewayNode, subscribe_url: str, publish_url: str) -> None:
    address = strict_node.address
    subscriber = start(
        "subscribe", "ticker", "BTC-USD", "--count", "1", "--url", subscribe_url.format(a=address)
    )
    subscribed(subscriber)
    published = wsgateway(
        "publish", "ticker", "BTC-USD", "{}", "--token", PUBLISH_TOKEN,
        "--url", publish_url.format(a=address),
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    code, out, err = finish(subscriber)
    assert code == 0 and json.loads(out)["type"] == "update", err
    metrics = wsgateway("metrics", "--json", "--url", f"ws://{address}/ws/ticker")
    assert json.loads(metrics.stdout)["managers"]["ticker"]["messages_published"] >= 1
    other = wsgateway("subscribe", "trades", "X", "--url", f"ws://{address}/ws/ticker")
    assert other.returncode == 2
    assert "--url names the channel ticker, the command trades" in other.stderr


def test_a_close_by_the_gateway_prints_code_and_reason() -> None:
    with GatewayNode("--set", "drain_seconds=0") as node:
        subscriber = start("subscribe", "ticker", "BTC-USD", "--url", node.http)
        subscribed(subscriber)
        node.signal(signal.SIGTERM)
        code, _, err = finish(subscriber)
        assert node.wait(20) == 0
    assert code == 1
    assert "the gateway closed the connection with 1012 (the node drains: reconnect)" in err


def test_serve_flags_usage_and_set() -> None:
    unknown = wsgateway("serve", "--nope")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("usage: wsgateway serve ")
    assert "wsgateway serve: error: unrecognized arguments: --nope" in unknown.stderr
    nested = wsgateway("config", "check", "--nope")
    assert nested.returncode == 2 and nested.stderr.startswith("usage: wsgateway config check ")
    for args, message in [
        (["--set", "port"], "bad setting --set='port': expected KEY=VALUE"),
        (["--set", "prot=1"], "bad setting prot=1: unknown key in --set"),
        (["--set", "port=99999"], "bad setting port=99999: expected an integer"),
        (["--set", "channel.nope.max_topics=1"], "channel.nope"),
        (["--log-level", "loud"], "bad setting log_level='LOUD'"),
    ]:
        result = wsgateway("serve", *args)
        assert result.returncode == 2 and result.stderr.startswith("wsgateway: "), args
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    # A named flag wins over --set, which wins over the environment (GatewayNode: --port 0).
    with GatewayNode("--set", "port=99999", env={"WSGATEWAY_PORT": "99998"}) as node:
        assert node.port != 0


@pytest.mark.timeout(60)
def test_bench_exits_1_when_its_result_is_not_valid() -> None:
    with GatewayNode("--set", "channel.ticker.max_connections=2") as node:
        result = wsgateway(
            "bench", "--url", f"ws://{node.address}/ws/ticker", "--clients", "6",
            "--warmup", "0.2", "--duration", "0.3", "--quiet", timeout=50,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["valid"] is False
    assert "wsgateway bench: the result is not valid: 4 of 6 clients could not connect" in (
        result.stderr
    )
