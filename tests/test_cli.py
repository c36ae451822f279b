"""The wsgateway command, run as a real process: serve, publish, subscribe, metrics."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from wsgateway import server as serving
from wsgateway.settings import Settings

pytestmark = pytest.mark.e2e

JWT_SECRET = "cli-test-jwt-secret-0123456789abcdef"
PUBLISH_TOKEN = "cli-test-publish-token-42"


def wsgateway(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(env),
    )


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATEWAY_")}
    return {**env, **(extra or {})}


class Server:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.ws = url.replace("http", "ws", 1)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=20)
        return self.process.returncode, out, err


@pytest.fixture
def server() -> Iterator[Server]:
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgateway", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(
            {
                "WSGATEWAY_JWT_SECRET": JWT_SECRET,
                "WSGATEWAY_PUBLISH_TOKEN": PUBLISH_TOKEN,
                "WSGATEWAY_DRAIN_SECONDS": "0.3",
            }
        ),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    assert match, line
    running = Server(process, match.group(1))
    yield running
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--port", "abc"], {}, "port='abc'"),
        (["--port", "70000"], {}, "port='70000'"),
        ([], {"WSGATEWAY_MAX_TOPICS": "0"}, "max_topics='0'"),
        ([], {"WSGATEWAY_HEARTBEAT": "soon"}, "heartbeat='soon'"),
        ([], {"WSGATEWAY_PROT": "8080"}, "WSGATEWAY_PROT='8080'"),
        ([], {"WSGATEWAY_CHANNELS": "ticker,Bad Name"}, "channels='Bad Name'"),
        (["--broker", "kafka://x"], {}, "broker='kafka://x'"),
        (["--workers", "2"], {}, "workers=2: more than 1 worker needs a shared broker"),
        ([], {"WSGATEWAY_WORKERS": "3"}, "workers=3: more than 1 worker needs a shared broker"),
        ([], {"WSGATEWAY_PUBLISH_TOKEN": "short"}, "publish_token='***'"),
    ],
    ids=[
        "port-text",
        "port-range",
        "limit-zero",
        "heartbeat-text",
        "unknown-env",
        "channel-name",
        "broker-scheme",
        "workers-memory-flag",
        "workers-memory-env",
        "short-secret",
    ],
)
def test_bad_setting_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], names: str
) -> None:
    result = wsgateway("serve", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsgateway: bad setting ") and names in lines[0]
    assert "short" not in lines[0] or "publish_token" not in lines[0]


def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text("port = [\n")
    result = wsgateway("serve", "--config", str(config))
    assert result.returncode == 2 and "config=" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    config.write_text("[channel.nope]\nmax_topics = 5\n")
    result = wsgateway("serve", "--config", str(config))
    assert result.returncode == 2 and "channel.nope" in result.stderr
    result = wsgateway("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "cannot read the file" in result.stderr


def test_publish_subscribe_metrics_and_graceful_shutdown(server: Server) -> None:
    # subscribe prints the ack and each update as one JSON line, and stops after --count.
    subscriber = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsgateway",
            "subscribe",
            "ticker",
            "BTC-USD",
            "--count",
            "2",
            "--url",
            server.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(None),
    )
    assert subscriber.stdout is not None
    assert json.loads(subscriber.stdout.readline())["type"] == "subscribed"

    published = wsgateway(
        "publish",
        "ticker",
        "BTC-USD",
        '{"price": 1.5}',
        "--url",
        server.url,
        "--token",
        PUBLISH_TOKEN,
    )
    assert (published.returncode, json.loads(published.stdout)) == (0, {"accepted": 1})
    published = wsgateway(
        "publish",
        "ticker",
        "BTC-USD",
        '{"price": 2.5}',
        "--url",
        server.url,
        env={"WSGATEWAY_PUBLISH_TOKEN": PUBLISH_TOKEN},
    )
    assert published.returncode == 0
    out, _ = subscriber.communicate(timeout=20)
    updates = [json.loads(line) for line in out.splitlines()]
    assert [(u["seq"], u["data"]) for u in updates] == [(1, {"price": 1.5}), (2, {"price": 2.5})]
    assert subscriber.returncode == 0

    refused = wsgateway(
        "publish", "ticker", "BTC-USD", "{}", "--url", server.url, "--token", "wrong-token-123"
    )
    assert refused.returncode == 1
    assert "answered 401 (Authorization)" in refused.stderr
    bad = wsgateway(
        "publish", "ticker", "BTC USD", "{}", "--url", server.url, "--token", PUBLISH_TOKEN
    )
    assert bad.returncode == 1 and "answered 400 (topic)" in bad.stderr
    bad_json = wsgateway("publish", "ticker", "BTC-USD", "{nope", "--url", server.url)
    assert bad_json.returncode == 2 and "data=" in bad_json.stderr

    table = wsgateway("metrics", "--url", server.url)
    assert table.returncode == 0
    channel_table, node_table = table.stdout.split("\n\n")[1:]
    rows = {line.split()[0]: line.split() for line in channel_table.splitlines()}
    assert set(rows) == {"channel", "market", "ticker", "orderbook", "trades", "user"}
    nodes = [line.split() for line in node_table.splitlines()]
    assert nodes[0][:4] == ["node", "address", "worker", "pid"]
    assert len(nodes) == 2 and nodes[1][1] == server.url.removeprefix("http://")
    assert rows["ticker"][3] == "2"  # published
    raw = wsgateway("metrics", "--json", "--url", server.url)
    assert json.loads(raw.stdout)["managers"]["ticker"]["messages_published"] == 2

    # SIGTERM: the node drains (every client closed with 1012) and the process exits 0.
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(connect(f"{server.ws}/ws/{name}"))
            for name in ("ticker", "trades", "market")
        ]
        for ws in clients:
            ws.send('{"type": "ping"}')
            assert json.loads(ws.recv(timeout=5))["type"] == "pong"
        code, out, _ = server.stop(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 1012
    assert code == 0 and "wsgateway stopped" in out


def test_sigint_stops_cleanly(server: Server) -> None:
    code, out, _ = server.stop(signal.SIGINT)
    assert code == 0 and "wsgateway stopped" in out


def test_logs_never_contain_tokens(server: Server) -> None:
    token = jwt.encode(
        {"sub": "alice", "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256"
    )
    with connect(f"{server.ws}/ws/user?token={token}") as ws:
        ws.send('{"type": "subscribe", "topics": ["alice"]}')
        assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
    bad_token = token[:-4] + "AAAA"
    for _ in range(3):
        with (
            pytest.raises(InvalidStatus, match="401"),
            connect(f"{server.ws}/ws/user?token={bad_token}"),
        ):
            pass
    published = wsgateway(
        "publish", "user", "alice", "{}", "--url", server.url, "--token", PUBLISH_TOKEN
    )
    assert published.returncode == 0
    _, out, err = server.stop()
    logs = out + err
    assert "/ws/user" in logs
    assert "rejected connection on user from 127.0.0.1: unauthorized" in logs
    for secret in (token, bad_token, JWT_SECRET, PUBLISH_TOKEN, token.split(".")[2]):
        assert secret not in logs


def test_client_commands_report_an_unreachable_gateway() -> None:
    result = wsgateway("metrics", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:9" in result.stderr


def test_serve_tunes_the_collector_for_many_long_lived_connections() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()  # conftest's loop_errors freezes what predates the test
    started = [[] for _ in range(1000)]  # stands for what start-up made
    try:
        serving.tune_gc()
        assert gc.get_threshold() == serving.GC_THRESHOLDS
        assert serving.GC_THRESHOLDS[2] > before[2]  # rarer full collections than the default
        # Start-up objects are out of every collection.
        assert gc.get_freeze_count() >= frozen + len(started)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("10.0.0.5", None, True),
        ("gw.example.com", None, True),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", PUBLISH_TOKEN, False),
    ],
)
def test_serve_warns_when_the_loopback_rule_guards_a_public_bind(
    host: str, token: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(host=host, publish_token=token)
    with caplog.at_level("WARNING", logger="wsgateway"):
        assert serving.warn_about_exposed_loopback_rule(settings) is warned
    assert ("no publish_token is set and the gateway listens on" in caplog.text) is warned
