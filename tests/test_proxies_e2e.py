"""Trusted proxies and the loopback publish rule, over real sockets.

Without a publish_token, "loopback may publish" must not extend to a browser page on this
host (foreign Origin, a text/plain or form body, DNS rebinding through Host), nor to the
internet clients of a reverse proxy on this host. Behind a trusted proxy, limits, logs and
the publish rule see the client the proxy names; from anyone else, such headers count
for nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestServer
from websockets.exceptions import InvalidStatus

from wsgateway import Settings, create_app
from wsgateway.web import AccessLogger

from .conftest import RunningGateway, StartGateway, recv_json, request

pytestmark = [pytest.mark.e2e, pytest.mark.attack]

JSON = {"Content-Type": "application/json"}
GOOD = {"channel": "ticker", "topic": "BTC-USD", "data": {"price": 1}}
PROXY = "127.0.0.1"  # the reverse proxy on this host
ELSEWHERE = "127.0.0.5"  # a local peer that is not a trusted proxy


@asynccontextmanager
async def session(source: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


async def post(
    gw: RunningGateway,
    headers: dict[str, str],
    body: bytes | None = None,
    *,
    source: str = "127.0.0.1",
    skip: tuple[str, ...] = (),
) -> tuple[int, Any]:
    async with (
        session(source) as http,
        http.post(
            gw.http + "/api/publish",
            data=json.dumps(GOOD).encode() if body is None else body,
            headers=headers,
            skip_auto_headers=skip,
        ) as response,
    ):
        return response.status, await response.json()


async def subscriber(gw: RunningGateway) -> websockets.ClientConnection:
    ws = await websockets.connect(gw.ws_url("ticker"))
    assert (await request(ws, {"type": "subscribe", "topics": ["BTC-USD"]}))["type"] == (
        "subscribed"
    )
    return ws


def refusal(field: str, code: str, message: str) -> dict[str, str]:
    return {"error": code, "field": field, "message": message}


FOREIGN_ORIGIN = refusal(
    "Origin",
    "forbidden_origin",
    "a browser page from another origin may not publish without a publish_token",
)
NOT_JSON = refusal(
    "Content-Type", "unsupported_media_type", "send the body as Content-Type: application/json"
)
NOT_LOCAL_HOST = refusal(
    "Host",
    "forbidden_host",
    "without a publish_token, publish to a loopback address, localhost or the gateway's bound host",
)
RELAYED = refusal(
    "X-Forwarded-For",
    "forbidden",
    "relayed by a proxy that is not in trusted_proxies; without a publish_token only "
    "loopback clients may publish",
)
NOT_LOOPBACK = refusal(
    "Authorization",
    "forbidden",
    "no publish_token is configured, so only loopback clients may publish",
)


@pytest.mark.parametrize(
    ("headers", "skip", "status", "reply"),
    [
        pytest.param(
            {**JSON, "Origin": "https://evil.example"}, (), 403, FOREIGN_ORIGIN, id="origin"
        ),
        pytest.param({**JSON, "Origin": "null"}, (), 403, FOREIGN_ORIGIN, id="origin-null"),
        # what a page may send cross-site without a CORS preflight
        pytest.param({"Content-Type": "text/plain"}, (), 415, NOT_JSON, id="text-plain"),
        pytest.param(
            {"Content-Type": "application/x-www-form-urlencoded"}, (), 415, NOT_JSON, id="form"
        ),
        pytest.param({}, ("Content-Type",), 415, NOT_JSON, id="no-content-type"),
        # DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends its own name
        pytest.param({**JSON, "Host": "evil.example:8080"}, (), 403, NOT_LOCAL_HOST, id="host"),
        # a proxy on this host that nobody declared in trusted_proxies
        pytest.param({**JSON, "X-Forwarded-For": "203.0.113.7"}, (), 403, RELAYED, id="xff"),
        pytest.param({**JSON, "Forwarded": "for=203.0.113.7"}, (), 403, RELAYED, id="forwarded"),
        pytest.param({**JSON, "X-Real-IP": "203.0.113.7"}, (), 403, RELAYED, id="x-real-ip"),
    ],
)
async def test_loopback_rule_refuses_cross_site_and_relayed_publishes(
    gw: RunningGateway,
    headers: dict[str, str],
    skip: tuple[str, ...],
    status: int,
    reply: dict[str, str],
) -> None:
    """Before: each of these was answered 200 and the message published."""
    bystander = await subscriber(gw)
    assert await post(gw, headers, skip=skip) == (status, reply)
    # Nothing was published: the next good publish is seq 1, and the bystander gets it.
    assert await post(gw, {**JSON, "Origin": f"http://127.0.0.1:{gw.server.port}"}) == (
        200,
        {"accepted": 1},
    )
    update = await recv_json(bystander)
    assert (update["seq"], update["data"]) == (1, {"price": 1})
    await bystander.close()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "application/json; charset=utf-8"}, id="charset"),
        pytest.param({**JSON, "Host": "localhost:8080"}, id="localhost"),
        pytest.param({**JSON, "Host": "[::1]:8080"}, id="ipv6-loopback"),
    ],
)
async def test_local_programs_still_publish(gw: RunningGateway, headers: dict[str, str]) -> None:
    assert await post(gw, headers) == (200, {"accepted": 1})


async def test_a_publish_token_is_checked_instead(start_gateway: StartGateway) -> None:
    token = "proxy-test-publish-token"
    gw = await start_gateway(Settings(publish_token=token))
    auth = {"Authorization": f"Bearer {token}"}
    # Token holders are programs: no Content-Type, Host or proxy rules apply to them.
    assert await post(gw, {**auth, "X-Forwarded-For": "203.0.113.7"}, skip=("Content-Type",)) == (
        200,
        {"accepted": 1},
    )


# -- behind a trusted proxy ---------------------------------------------------------------------


async def test_a_same_host_proxy_does_not_lend_its_loopback_address_to_its_clients(
    start_gateway: StartGateway,
) -> None:
    """Before: every internet client of a reverse proxy on this host could publish."""
    gw = await start_gateway(Settings(trusted_proxies=(PROXY,)))
    bystander = await subscriber(gw)
    for chain in ("203.0.113.7", "127.0.0.1, 203.0.113.7", "203.0.113.7, unknown"):
        headers = {**JSON, "X-Forwarded-For": chain}
        assert await post(gw, headers, source=PROXY) == (403, NOT_LOOPBACK), chain
    forwarded = {**JSON, "Forwarded": 'for="[2001:db8::7]:443"'}
    assert await post(gw, forwarded, source=PROXY) == (403, NOT_LOOPBACK)
    # The proxy's own requests, and a local client through it, still publish.
    assert await post(gw, JSON, source=PROXY) == (200, {"accepted": 1})
    assert await post(gw, {**JSON, "X-Forwarded-For": "127.0.0.1"}, source=PROXY) == (
        200,
        {"accepted": 1},
    )
    assert (await recv_json(bystander))["seq"] == 1
    await bystander.close()


async def connect(gw: RunningGateway, source: str, client: str) -> websockets.ClientConnection:
    return await websockets.connect(
        gw.ws_url("ticker"), local_addr=(source, 0), additional_headers={"X-Forwarded-For": client}
    )


async def test_limits_count_the_client_a_trusted_proxy_names(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(Settings(trusted_proxies=("127.0.0.0/30",)), max_connections_per_ip=1)
    first = await connect(gw, PROXY, "198.51.100.1")
    second = await connect(gw, "127.0.0.2", "198.51.100.2")  # another trusted proxy
    with (
        caplog.at_level(logging.WARNING, logger="wsgateway.channel"),
        pytest.raises(InvalidStatus) as caught,
    ):
        await connect(gw, "127.0.0.2", "10.9.9.9, 198.51.100.1")
    assert caught.value.response.status_code == 429
    assert json.loads(caught.value.response.body)["error"] == "ip_limit"
    assert "rejected connection on ticker from 198.51.100.1: ip_limit" in caplog.text
    await first.close()
    await second.close()


async def test_headers_from_an_untrusted_peer_count_for_nothing(
    start_gateway: StartGateway,
) -> None:
    """Before: no header was read, and none may be read from a peer that is not trusted."""
    gw = await start_gateway(Settings(trusted_proxies=(PROXY,)), max_connections_per_ip=1)
    first = await connect(gw, ELSEWHERE, "198.51.100.1")
    with pytest.raises(InvalidStatus) as caught:
        await connect(gw, ELSEWHERE, "198.51.100.2")  # a fresh name: still one address
    assert caught.value.response.status_code == 429
    bystander = await connect(gw, PROXY, "198.51.100.3")
    await request(bystander, {"type": "subscribe", "topics": ["BTC-USD"]})
    await gw.publish("ticker", "BTC-USD", {"price": 3})
    assert (await recv_json(bystander))["data"] == {"price": 3}
    await first.close()
    await bystander.close()


async def test_the_access_log_names_the_client_behind_a_trusted_proxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(Settings(trusted_proxies=(PROXY,)))
    logger = logging.getLogger("test.access")
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(access_log_class=AccessLogger, access_log=logger)
    try:
        with caplog.at_level(logging.INFO, logger="test.access"):
            for source, client in ((PROXY, "198.51.100.9"), (ELSEWHERE, "198.51.100.10")):
                async with (
                    session(source) as http,
                    http.get(
                        f"http://127.0.0.1:{server.port}/api",  # not a poll: INFO
                        headers={"X-Forwarded-For": client},
                    ) as response,
                ):
                    assert response.status == 200
    finally:
        await server.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "test.access"]
    assert lines[0].startswith('198.51.100.9 "GET /api" 200'), lines
    assert lines[1].startswith(f'{ELSEWHERE} "GET /api" 200'), lines
