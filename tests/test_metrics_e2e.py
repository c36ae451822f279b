"""/metrics and /api/ws/metrics over HTTP: the JSON view equals the scrape, figure by figure."""

from __future__ import annotations

import json

import aiohttp
import jwt
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

import wsgateway
from wsgateway import Settings
from wsgateway.metrics import (
    CLIENT_ERROR_CODES,
    DISCONNECT_REASONS,
    ERROR_TYPES,
    FAIL_REASONS,
    FRAME_KINDS,
    LIMIT_METRICS,
    RATE_LIMITS,
    REJECT_REASONS,
    REPAIR_OUTCOMES,
    RESUME_OUTCOMES,
)
from wsgateway.settings import LIMIT_NAMES

from .conftest import RunningGateway, StartGateway, recv_json, request, until

pytestmark = pytest.mark.e2e
JWT_SECRET = "a-test-secret-of-at-least-32-bytes-long"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: RunningGateway, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.http + "/metrics", headers=headers) as response,
    ):
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, channel: str) -> float:
    return sum(
        v for (n, labels), v in samples.items() if n == name and ("channel", channel) in labels
    )


async def drive_traffic(gw: RunningGateway) -> None:
    """Connections, subscriptions, updates, bad frames, a rejection and a disconnect."""
    async with (
        websockets.connect(gw.ws_url("ticker")) as a,
        websockets.connect(gw.ws_url("trades")) as b,
    ):
        await request(a, {"type": "subscribe", "topics": ["BTC-USD", "ETH-USD"]})
        await request(b, {"type": "subscribe", "topics": ["*"]})
        assert (await request(a, "not json"))["code"] == "bad_json"
        for i in range(5):
            await gw.publish("ticker", "BTC-USD", {"i": i})
            await gw.publish("trades", "ETH-USD", {"i": i})
        for _ in range(5):
            await recv_json(a)
            await recv_json(b)
        with pytest.raises(InvalidStatus):
            async with websockets.connect(gw.ws_url("user")):
                pass
        async with websockets.connect(gw.ws_url("orderbook")) as c:
            await request(c, {"type": "subscribe", "topics": ["SOL-USD"]})


async def test_json_view_equals_the_scrape(gw: RunningGateway) -> None:
    await drive_traffic(gw)
    # Wait until the server has seen the three disconnects, so both reads see one state.
    await until(lambda: gw.gateway.metrics_json()["total_active_connections"] == 0)
    _, text = await scrape(gw)
    view = await gw.get_json("/api/ws/metrics")
    samples = parse(text)

    checks = {
        "total_connections": "wsgateway_connections_total",
        "active_connections": "wsgateway_connections_active",
        "messages_sent": "wsgateway_updates_sent_total",
        "messages_failed": "wsgateway_updates_failed_total",
        "errors": "wsgateway_errors_total",
        "messages_published": "wsgateway_messages_published_total",
        "messages_received": "wsgateway_messages_received_total",
        "subscriptions": "wsgateway_subscriptions_active",
        "topics": "wsgateway_topics_active",
        "outbox_bytes": "wsgateway_outbox_bytes",
        "slow_consumers": "wsgateway_slow_consumers_total",
        "conflated": "wsgateway_conflated_updates_total",
        "checksum_frames": "wsgateway_checksum_frames_total",
    }
    assert set(view["managers"]) == set(gw.gateway.settings.channels)
    for channel, figures in view["managers"].items():
        for key, metric in checks.items():
            assert figures[key] == total(samples, metric, channel), (channel, key)
        for reason, count in figures["rejected"].items():
            assert count == value(
                samples, "wsgateway_connections_rejected_total", channel=channel, reason=reason
            )
        assert figures["mode"] == gw.gateway.channels[channel].mode
        for setting in LIMIT_METRICS:
            name, factor = LIMIT_METRICS[setting]
            assert figures["limits"][setting] == pytest.approx(
                value(samples, name, channel=channel, setting=setting) / factor
            )
        for kind, count in figures["frames_sent"].items():
            assert count == value(
                samples, "wsgateway_frames_sent_total", channel=channel, kind=kind
            )
        for setting in RATE_LIMITS:
            assert figures["rate_limits"][setting] == figures["limits"][setting]
        sent, failed = figures["messages_sent"], figures["messages_failed"]
        expected_rate = None if sent + failed == 0 else round(sent / (sent + failed), 6)
        assert figures["success_rate"] == expected_rate
        assert figures["uptime"] == view["uptime_seconds"]

    # The traffic really happened, and the figures say so.
    ticker = view["managers"]["ticker"]
    assert ticker["total_connections"] == 1 and ticker["messages_published"] == 5
    assert ticker["messages_sent"] == 5  # updates only
    assert ticker["frames_sent"] == {
        "reply": 1,
        "error": 1,
        "pong": 0,
        "reset": 0,
        "heartbeat": 0,
        "snapshot": 0,
    }
    assert ticker["messages_received"] == 2
    assert view["managers"]["trades"]["messages_sent"] == 5
    assert view["managers"]["trades"]["frames_sent"]["reply"] == 1
    assert view["managers"]["user"]["rejected"]["unauthorized"] == 1
    assert view["managers"]["orderbook"]["total_connections"] == 1

    assert view["total_active_connections"] == sum(
        total(samples, "wsgateway_connections_active", c) for c in view["managers"]
    )
    assert view["total_messages_sent"] == sum(
        total(samples, "wsgateway_updates_sent_total", c) for c in view["managers"]
    )
    assert view["total_errors"] == sum(
        total(samples, "wsgateway_errors_total", c) for c in view["managers"]
    )
    start = value(samples, "wsgateway_start_time_seconds")
    assert 0 <= view["uptime_seconds"] < 60 and start > 1.7e9
    assert view["broker_connected"] is (value(samples, "wsgateway_broker_connected") == 1)
    # Every connection has ended and released its socket (the clients read everything).
    assert view["open_sockets"] == value(samples, "wsgateway_open_sockets") == 0


async def test_every_channel_is_present_before_any_connection(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(Settings(channels=("alpha", "beta")))
    view = await gw.get_json("/api/ws/metrics")
    assert view["total_active_connections"] == 0
    assert view["overall_success_rate"] is None
    assert set(view["managers"]) == {"alpha", "beta"}
    alpha = view["managers"]["alpha"]
    assert alpha["success_rate"] is None and alpha["last_error"] is None
    assert alpha["rate_limits"] == {
        "messages_per_second": 100,
        "connections_per_minute": 60,
        "handshakes_per_second": 1000,
    }
    samples = parse((await scrape(gw))[1])
    assert value(samples, "wsgateway_connections_active", channel="beta") == 0


async def test_build_info_and_no_created_series_in_a_real_scrape(gw: RunningGateway) -> None:
    _, text = await scrape(gw)
    (build,) = [line for line in text.splitlines() if line.startswith("wsgateway_build_info{")]
    assert f'version="{wsgateway.__version__}"' in build and build.endswith(" 1.0")
    assert not [line for line in text.splitlines() if "_created" in line]
    assert "wsgateway_limit{" not in text and "wsgateway_messages_sent" not in text


@pytest.mark.attack
async def test_labels_come_only_from_closed_sets(gw: RunningGateway) -> None:
    """No topic, user, address or connection id may ever become a label value."""
    await drive_traffic(gw)
    allowed: dict[str, set[str]] = {
        "channel": set(gw.gateway.settings.channels),
        "reason": {*REJECT_REASONS, *FAIL_REASONS, *DISCONNECT_REASONS},
        "type": set(ERROR_TYPES),
        "code": set(CLIENT_ERROR_CODES),
        "limit": set(RATE_LIMITS),
        "setting": set(LIMIT_NAMES),
        "outcome": {*RESUME_OUTCOMES, *REPAIR_OUTCOMES},
        "kind": set(FRAME_KINDS),
        "mode": {"stream", "last", "book"},
        "le": set(),  # histogram buckets: any number
    }
    for (name, labels), _ in parse((await scrape(gw))[1]).items():
        if not name.startswith("wsgateway_") or name == "wsgateway_build_info":
            continue  # build_info: one series, its labels the versions of this process
        for label, label_value in labels:
            assert label in allowed, (name, label)
            if label != "le":
                assert label_value in allowed[label], (name, label, label_value)
            assert "BTC" not in label_value and "127.0.0.1" not in label_value


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {key for key in parse(text) if key[0].startswith("wsgateway_")}


@pytest.mark.attack
async def test_no_series_grows_with_topics_users_addresses_or_bad_input(
    start_gateway: StartGateway,
) -> None:
    """A client chooses topics, user ids (its token), addresses, paths and frames: none of
    them may add a time series, or a scraper's memory grows with an attacker's creativity."""
    gw = await start_gateway(Settings(jwt_secret=JWT_SECRET))
    before = series((await scrape(gw))[1])
    for i in range(8):  # eight source addresses, topics, users, unknown channels, bad frames
        address = f"127.0.0.{i + 2}"
        token = jwt.encode({"sub": f"user-{i}"}, JWT_SECRET, algorithm="HS256")
        async with (
            websockets.connect(gw.ws_url("ticker"), local_addr=(address, 0)) as ticker,
            websockets.connect(
                gw.ws_url("user", f"?token={token}"), local_addr=(address, 0)
            ) as user,
        ):
            topics = [f"TOPIC-{i}-{n}" for n in range(5)]
            assert (await request(ticker, {"type": "subscribe", "topics": topics}))["type"] == (
                "subscribed"
            )
            await request(user, {"type": "subscribe", "topics": [f"user-{i}"]})
            for bad in ({"type": f"kind-{i}"}, {"type": "subscribe", "topics": [f"bad topic {i}"]}):
                assert (await request(ticker, bad))["type"] == "error"
            await gw.publish("ticker", topics[0], {"i": i})
            await gw.publish("user", f"user-{i}", {"i": i})
            await recv_json(ticker)
            await recv_json(user)
        with pytest.raises(InvalidStatus):
            async with websockets.connect(gw.ws_url(f"channel-{i}")):
                pass
        with pytest.raises(InvalidStatus):
            async with websockets.connect(gw.ws_url("user", f"?token=forged.{i}.token")):
                pass
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.http}/no/such/path/{i}") as response:
                assert response.status == 404
            async with session.post(
                f"{gw.http}/api/publish",
                data=f"not json {i}",
                headers={"Content-Type": "application/json"},
            ) as response:
                assert response.status == 400
    after = series((await scrape(gw))[1])
    assert after == before, sorted(after ^ before)


async def test_openmetrics_is_negotiated(gw: RunningGateway) -> None:
    content_type, text = await scrape(gw, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    content_type, text = await scrape(gw)
    assert content_type.startswith("text/plain")
    assert "wsgateway_connections_total" in text


async def test_two_apps_in_one_process_do_not_collide(start_gateway: StartGateway) -> None:
    first, second = await start_gateway(), await start_gateway()
    await first.publish("ticker", "BTC-USD", {"p": 1})
    await until(
        lambda: first.gateway.metrics_json()["managers"]["ticker"]["messages_published"] == 1
    )
    assert second.gateway.metrics_json()["managers"]["ticker"]["messages_published"] == 0


async def test_health_and_readiness(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.http + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with session.get(gw.http + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"ready": True})
        gw.gateway.start_draining()
        async with session.get(gw.http + "/readyz") as r:
            assert (r.status, await r.json()) == (503, {"ready": False, "reason": "draining"})
        # A draining gateway refuses new clients with 503 before the upgrade.
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(gw.ws_url("ticker")):
                pass
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["error"] == "draining"
