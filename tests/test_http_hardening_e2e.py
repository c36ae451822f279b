"""HTTP hardening, attacked over real sockets (issue 7, item 4).

Compressed bodies, publish data that parses but cannot be carried, JWT time claims, a
forged access log line and a crashed relay: each attack gets its exact answer, and a
bystander (a subscriber, a good publisher) is still served. Raw sockets and aiohttp's
client send the requests; python-websockets is the WebSocket client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp.test_utils import TestServer
from websockets.exceptions import InvalidStatus

from wsgateway import Settings, create_app, get_gateway
from wsgateway.brokers import Update
from wsgateway.brokers.memory import QUEUE_BATCHES, MemoryBroker
from wsgateway.errors import BrokerUnavailable
from wsgateway.web import AccessLogger

from .conftest import RunningGateway, StartGateway, recv_json, request, until
from .test_bad_input_e2e import (
    GOOD,
    JWT_SECRET,
    PUBLISH_TOKEN,
    TOKEN_HEADER,
    bad_request,
    body_of,
    expect_update,
    nothing_was_published,
    post,
    publish_setup,
    sample,
    subscribed,
    user_token,
)

pytestmark = pytest.mark.e2e

INTEGER_RULE = (
    "integers must be within -2^63 .. 2^64-1 (larger ones would lose digits; send them as strings)"
)


# -- compressed bodies ------------------------------------------------------------------------

BOMB_BYTES = 500_000  # each; inflates to about 500 MB of zeros


@pytest.fixture(scope="module")
def deflate_bomb() -> bytes:
    """About 0.5 MB of deflate (zlib) that inflates to about 1,000 times as much."""
    return bomb(BOMB_BYTES)


def bomb(size: int) -> bytes:
    # A zlib header, then one raw deflate block of 1 MiB of zeros (about 1 KB) repeated:
    # a full flush makes each copy stand alone. Cut off unfinished, as an attacker may.
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(b"\0" * 1_048_576) + raw.flush(zlib.Z_FULL_FLUSH)
    return (b"\x78\xda" + block * (size // len(block) + 1))[:size]


async def raw_exchange(port: int, head: str, body: bytes) -> tuple[int, bytes]:
    """Send one request over a fresh socket; return the status and everything the server
    sent until it closed the connection (``Connection: close``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + body)
        # The old code answered, then inflated the rest of the body before closing.
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.attack
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/api/publish", 401), ("GET", "/healthz", 200)],
    ids=["publish-without-token", "healthz"],
)
async def test_compressed_bodies_are_never_inflated(
    start_gateway: StartGateway, deflate_bomb: bytes, method: str, path: str, status: int
) -> None:
    """Three 0.5 MB deflate bodies, unauthenticated: aiohttp inflated them in its parser
    (about 1.4 s of loop CPU each) before and after any handler looked at them."""
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: deflate\r\nConnection: close\r\n"
            f"Content-Length: {len(deflate_bomb)}\r\n\r\n"
        )
        cpu = time.process_time()  # server and attackers share this process
        answers = await asyncio.gather(
            *(raw_exchange(gw.server.port or 0, head, deflate_bomb) for _ in range(3))
        )
        spent = time.process_time() - cpu
        assert [code for code, _ in answers] == [status] * 3
        # Before: about 4 s of CPU for the three. Reading 1.5 MB is a few milliseconds.
        assert spent < 1.0, f"{spent:.2f} s of CPU for three compressed bodies"
        pong = await request(subscriber, {"type": "ping", "id": 1})
        assert pong["type"] == "pong"
        await nothing_was_published(gw, subscriber, http)


@pytest.mark.attack
@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("deflate", zlib.compress),
        ("gzip", lambda data: zlib.compress(data, wbits=31)),
        ("GZIP", lambda data: zlib.compress(data, wbits=31)),
        ("identity, gzip", lambda data: zlib.compress(data, wbits=31)),
    ],
)
async def test_compressed_publish_is_415_with_the_token(
    start_gateway: StartGateway, encoding: str, compress: Any
) -> None:
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        headers = {**TOKEN_HEADER, "Content-Encoding": encoding}
        assert await post(http, compress(body_of(GOOD)), headers) == (
            415,
            {
                "error": "unsupported_encoding",
                "field": "Content-Encoding",
                "message": "compressed bodies are not accepted; send the JSON uncompressed",
            },
        )
        await nothing_was_published(gw, subscriber, http)


async def test_identity_encoding_is_accepted(start_gateway: StartGateway) -> None:
    async with publish_setup(start_gateway) as (_gw, subscriber, http):
        headers = {**TOKEN_HEADER, "Content-Encoding": "identity"}
        assert await post(http, body_of(GOOD), headers) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 1, GOOD["data"])


# -- data that parses but cannot be carried ---------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.attack
async def test_data_nested_deeper_than_the_encoder_is_400_and_leaves_no_gap(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to be answered 200, take a seq the subscribers never saw, and log a
    traceback per message."""
    deep = {"channel": "ticker", "topic": "BTC-USD", "data": nested(255)}
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        with caplog.at_level(logging.WARNING):
            body = {"messages": [GOOD, GOOD, GOOD, deep] + [deep] * 100}
            assert await post(http, body_of(body)) == (
                400,
                bad_request(
                    "messages[3].data", "nested deeper than 254 levels of arrays and objects"
                ),
            )
            await nothing_was_published(gw, subscriber, http)
        assert [r for r in caplog.records if r.name.startswith("wsgateway")] == []
        # As deep as the encoder goes is delivered, whole.
        edge = {"channel": "ticker", "topic": "BTC-USD", "data": nested(254)}
        assert await post(http, body_of(edge)) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 2, nested(254))


@pytest.mark.attack
@pytest.mark.parametrize(
    "number",
    ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"],
)
async def test_integers_beyond_64_bits_are_400_naming_the_message(
    start_gateway: StartGateway, number: str
) -> None:
    """orjson read them as floats: 123456789012345678901234567890 reached subscribers as
    1.2345678901234568e+29."""
    wide = '{"channel": "ticker", "topic": "BTC-USD", "data": {"qty": %s}}' % number  # noqa: UP031
    raw = ('{"messages": [%s, %s]}' % (json.dumps(GOOD), wide)).encode()  # noqa: UP031
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        assert await post(http, raw) == (400, bad_request("messages[1].data", INTEGER_RULE))
        await nothing_was_published(gw, subscriber, http)


async def test_integers_at_the_64_bit_edges_arrive_exactly(start_gateway: StartGateway) -> None:
    raw = (
        b'{"channel": "ticker", "topic": "BTC-USD", '
        b'"data": [18446744073709551615, -9223372036854775808, 1e20, "123456789012345678901"]}'
    )
    async with publish_setup(start_gateway) as (_gw, subscriber, http):
        assert await post(http, raw) == (200, {"accepted": 1})
        expected = [2**64 - 1, -(2**63), 1e20, "123456789012345678901"]
        await expect_update(subscriber, "ticker", "BTC-USD", 1, expected)


async def test_a_failing_broadcast_logs_one_traceback_not_one_per_message(
    start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever makes a broadcast fail (none is known now that publish checks the data),
    it is counted per message and logged at most once per interval."""
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        channel = gw.gateway.channels["ticker"]

        def broken(update: Update) -> int:
            raise RuntimeError("broadcast bug")

        monkeypatch.setattr(channel, "broadcast", broken)
        with caplog.at_level(logging.ERROR, logger="wsgateway"):
            assert await post(http, body_of({"messages": [GOOD] * 500})) == (
                200,
                {"accepted": 500},
            )
            errors = "wsgateway_errors_total"
            await until(lambda: sample(gw, errors, channel="ticker", type="internal") == 500)
        failures = [r for r in caplog.records if r.getMessage().startswith("broadcast on")]
        assert len(failures) == 1 and failures[0].exc_info is not None
        monkeypatch.undo()
        assert await post(http, body_of(GOOD)) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 501, GOOD["data"])


# -- JWT time claims and the token settings ---------------------------------------------------


def raw_user_token(payload: str, secret: str = JWT_SECRET) -> str:
    """A token whose payload is exactly this JSON text (PyJWT would not write 10**400)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload.encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


async def refused_upgrade(gw: RunningGateway, token: str) -> tuple[int, Any]:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(gw.ws_url("user", "?token=" + token))
    response = refused.value.response
    return response.status_code, json.loads(response.body)


@pytest.mark.attack
async def test_exp_as_a_numeric_string_is_401(start_gateway: StartGateway) -> None:
    """PyJWT accepted "exp": "<2 s from now>"; the gateway saw no exp, set no timer and
    kept the connection open past the time the string meant."""
    gw = await start_gateway(Settings(jwt_secret=JWT_SECRET))
    async with subscribed(gw, "ticker", ["BTC-USD"]) as bystander:
        token = user_token(exp=str(int(time.time()) + 2))
        assert await refused_upgrade(gw, token) == (
            401,
            {"error": "unauthorized", "message": '"exp" must be a number (seconds since 1970)'},
        )
        await gw.publish("ticker", "BTC-USD", {"after": 1})
        await expect_update(bystander, "ticker", "BTC-USD", 1, {"after": 1})


@pytest.mark.attack
@pytest.mark.parametrize("exp", ["1" + "0" * 400, "1e300", "1" + "0" * 30])
async def test_huge_exp_is_served_not_a_500(start_gateway: StartGateway, exp: str) -> None:
    """A 400-digit exp raised OverflowError in the handshake (HTTP 500)."""
    gw = await start_gateway(Settings(jwt_secret=JWT_SECRET))
    token = raw_user_token('{"sub": "alice", "exp": ' + exp + "}")
    async with websockets.connect(gw.ws_url("user", "?token=" + token)) as alice:
        reply = await request(alice, {"type": "subscribe", "topics": ["alice"]})
        assert reply["type"] == "subscribed"
        await gw.publish("user", "alice", {"n": 1})
        assert (await recv_json(alice))["data"] == {"n": 1}


@pytest.mark.attack
async def test_audience_issuer_and_max_lifetime_settings_reach_the_handshake(
    start_gateway: StartGateway,
) -> None:
    settings = Settings(
        jwt_secret=JWT_SECRET,
        jwt_audience="market-data",
        jwt_issuer="auth.example.com",
        max_token_lifetime=600,
    )
    gw = await start_gateway(settings)
    now = int(time.time())
    good = {"aud": "market-data", "iss": "auth.example.com", "exp": now + 300}
    refusals = [
        ({**good, "aud": "billing"}, "invalid token (InvalidAudienceError)"),
        ({**good, "iss": "evil.example.com"}, "invalid token (InvalidIssuerError)"),
        (
            {"aud": "market-data", "iss": "auth.example.com"},
            'token has no "exp"; this gateway accepts only tokens that expire',
        ),
        (
            {**good, "exp": now + 3600},
            'token lives too long: "exp" is more than 600 seconds away (max_token_lifetime)',
        ),
    ]
    for claims, message in refusals:
        assert await refused_upgrade(gw, user_token(**claims)) == (
            401,
            {"error": "unauthorized", "message": message},
        )
    async with websockets.connect(gw.ws_url("user", "?token=" + user_token(**good))) as ws:
        assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"


# -- the access log ---------------------------------------------------------------------------


@pytest.mark.attack
async def test_access_log_lines_cannot_be_forged(caplog: pytest.LogCaptureFixture) -> None:
    """A percent-encoded CR LF in the path wrote a second, forged line into the access log
    (request.path is decoded); ESC drove the terminal of whoever read it."""
    server = TestServer(create_app(Settings()), host="127.0.0.1", port=0)
    await server.start_server(access_log_class=AccessLogger)
    try:
        path = "/healthz%0d%0a127.0.0.1%20%22GET%20/admin%22%20200%200.1ms%1b[2K%C2%85%E2%80%A8"
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 404")
            writer.close()
            # A bystander's request is logged as always (/api: a poll of /healthz is DEBUG).
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{server.port}/api") as response,
            ):
                assert response.status == 200
            await until(lambda: len(access_lines(caplog)) == 2)
        forged, bystander = access_lines(caplog)
        assert forged == (
            '127.0.0.1 "GET /healthz\\x0d\\x0a127.0.0.1 \\x22GET /admin\\x22 200 0.1ms'
            '\\x1b[2K\\x85\\u2028" 404'
        )
        assert bystander == '127.0.0.1 "GET /api" 200'
    finally:
        await server.close()


@pytest.mark.attack
async def test_malformed_requests_cannot_flood_the_error_log(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp wrote an ERROR line and a ten-line traceback for every malformed request:
    50 of them were 50 tracebacks. Now one line per 10 s, and the bystander is served."""
    gw = await start_gateway()
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        for i in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
            # (aiohttp logs a request that is not HTTP at all at DEBUG; a broken one at ERROR)
            writer.write(b"GET /%d HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n" % i)
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.0 400")
            writer.close()
        assert await gw.get_json("/healthz") == {"status": "ok"}
    errors = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= 30]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("Error handling request")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The access log's lines, without the trailing duration."""
    return [r.getMessage().rsplit(" ", 1)[0] for r in caplog.records if r.name == "aiohttp.access"]


# -- a crashed relay --------------------------------------------------------------------------


class CrashingBroker(MemoryBroker):
    """A memory broker whose batches() raises, once ``crash`` is set, after handing over a
    batch on topic CRASH: the relay loop stops consuming at that batch, then dies."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = asyncio.Event()
        self.publisher_waits = asyncio.Event()

    async def batches(self) -> AsyncIterator[Sequence[Update]]:
        async for batch in super().batches():
            if any(update.topic == "CRASH" for update in batch):
                await self.crash.wait()
                raise RuntimeError("a bug in the relay")
            yield batch

    async def _wait_for_room(self, queue: Any) -> None:
        self.publisher_waits.set()
        await super()._wait_for_room(queue)


@asynccontextmanager
async def crashing_gateway() -> AsyncIterator[tuple[RunningGateway, CrashingBroker]]:
    broker = CrashingBroker()
    app = create_app(Settings(publish_token=PUBLISH_TOKEN), broker=broker)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield RunningGateway(server, app), broker
    finally:
        await server.close()


UNAVAILABLE = {"error": "broker_unavailable", "field": "broker"}


@pytest.mark.attack
async def test_after_a_relay_crash_publishes_are_503_and_nobody_waits_forever() -> None:
    async with (
        crashing_gateway() as (gw, broker),
        subscribed(gw, "ticker", ["*"]) as subscriber,
        aiohttp.ClientSession(base_url=gw.http) as http,
    ):
        assert await post(http, body_of(GOOD)) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 1, GOOD["data"])
        crash = {"channel": "ticker", "topic": "CRASH", "data": 0}
        assert await post(http, body_of(crash)) == (200, {"accepted": 1})
        # The relay holds the CRASH batch; fill the queue behind it, then one publisher
        # more waits for room.
        for _ in range(QUEUE_BATCHES):
            await get_gateway(gw.app).publish("ticker", "ETH-USD", 1)
        waiting = asyncio.create_task(post_with_headers(http, body_of(GOOD)))
        await asyncio.wait_for(broker.publisher_waits.wait(), 10)
        assert not waiting.done()

        broker.crash.set()
        status, headers, body = await asyncio.wait_for(waiting, 10)
        assert (status, headers.get("Retry-After"), body) == (
            503,
            "5",
            {**UNAVAILABLE, "message": "the broker stopped; try again later"},
        )
        status, headers, body = await post_with_headers(http, body_of(GOOD))
        assert (status, headers.get("Retry-After"), body) == (
            503,
            "5",
            {**UNAVAILABLE, "message": "the gateway cannot deliver messages; try again later"},
        )
        with pytest.raises(BrokerUnavailable):
            await get_gateway(gw.app).publish("ticker", "BTC-USD", 1)

        assert sample(gw, "wsgateway_broker_connected") == 0
        async with http.get("/metrics") as response:
            assert "wsgateway_broker_connected 0.0" in (await response.text()).splitlines()
        async with http.get("/readyz") as response:
            assert response.status == 503
            assert await response.json() == {
                "ready": False,
                "reason": "relay loop crashed: RuntimeError",
            }
        # The WebSocket side still answers its clients.
        assert (await request(subscriber, {"type": "ping", "id": 2}))["type"] == "pong"


async def post_with_headers(http: aiohttp.ClientSession, body: bytes) -> tuple[int, Any, Any]:
    async with http.post("/api/publish", data=body, headers=TOKEN_HEADER) as response:
        return response.status, response.headers, await response.json()
