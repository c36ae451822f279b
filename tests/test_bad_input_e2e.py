"""Bad input, end to end: the exact answer to every malformed input, over real sockets.

Each case connects a *bystander* first (subscribed to a topic), sends the bad input on
another connection or request, checks the exact reply, then proves that the offender's
connection is still usable (when it should be) and that the bystander still receives a
published update with the right ``seq``. python-websockets is the WebSocket client and
aiohttp.ClientSession the HTTP client, so nothing here shares code with the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.typing import Origin

from wsgateway import Settings

from .conftest import RunningGateway, StartGateway, recv_json, request, until, wait_closed

# Every case here is hostile or boundary input over real sockets: the attack suite too.
pytestmark = [pytest.mark.e2e, pytest.mark.attack]

TOPIC_RULE = 'topic must be 1-64 characters of A-Z a-z 0-9 . _ - : / (or "*" for all topics)'
PUBLISH_TOPIC_RULE = "topic must be 1-64 characters of A-Z a-z 0-9 . _ - : /"
ID_RULE = '"id" must be an integer or a string of at most 64 characters'
TOPICS_RULE = '"topics" must be a non-empty list of strings'
UNKNOWN_TYPE = "unknown type {!r}; expected subscribe, unsubscribe or ping"
CHANNELS = "market, ticker, orderbook, trades, user"
JWT_SECRET = "a-test-secret-of-at-least-32-bytes-long"
PUBLISH_TOKEN = "s3cret-token"
MAX_PUBLISH_BODY = 4 * 1024 * 1024  # the documented body cap of POST /api/publish
NO_ID = object()  # the reply must have no "id" key at all


# -- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def subscribed(
    gw: RunningGateway, channel: str, topics: Sequence[str], query: str = ""
) -> AsyncIterator[websockets.ClientConnection]:
    """A client on ``channel`` subscribed to ``topics`` (the subscription is confirmed)."""
    async with websockets.connect(gw.ws_url(channel, query)) as ws:
        reply = await request(ws, {"type": "subscribe", "topics": list(topics), "id": "by"})
        assert reply["type"] == "subscribed", reply
        yield ws


async def expect_update(
    ws: websockets.ClientConnection, channel: str, topic: str, seq: int, data: Any
) -> None:
    """The next frame on ``ws`` is exactly this update (nothing else came before it)."""
    update = await recv_json(ws)
    assert update["type"] == "update", update
    assert (update["channel"], update["topic"], update["seq"]) == (channel, topic, seq)
    assert update["data"] == data
    assert isinstance(update["ts"], float)


async def bystander_still_served(
    gw: RunningGateway, bystander: websockets.ClientConnection, seq: int = 1
) -> None:
    """A message published on ticker/BTC-USD reaches the bystander with ``seq``."""
    await gw.publish("ticker", "BTC-USD", {"check": seq})
    await expect_update(bystander, "ticker", "BTC-USD", seq, {"check": seq})


async def still_usable(ws: websockets.ClientConnection, gw: RunningGateway) -> None:
    """``ws`` answers a ping, can subscribe, and receives what it subscribed to and only that.

    Publishing on ticker/BTC-USD before ticker/ETH-USD and then reading ETH-USD's update
    as the next frame shows that a rejected subscribe did not leave BTC-USD subscribed.
    """
    pong = await request(ws, {"type": "ping", "id": "still-there"})
    assert pong.keys() == {"type", "id", "ts"}
    assert (pong["type"], pong["id"]) == ("pong", "still-there")
    assert isinstance(pong["ts"], float)
    reply = await request(ws, {"type": "subscribe", "topics": ["ETH-USD"], "id": 99})
    assert reply == {
        "type": "subscribed",
        "topics": ["ETH-USD"],
        "positions": {"ETH-USD": {"seq": 0, "epoch": ""}},
        "id": 99,
    }
    await gw.publish("ticker", "ETH-USD", {"usable": True})
    await expect_update(ws, "ticker", "ETH-USD", 1, {"usable": True})


def sample(gw: RunningGateway, name: str, **labels: str) -> float:
    value = gw.gateway.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def error(code: str, message: str, request_id: Any = NO_ID) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not NO_ID:
        reply["id"] = request_id
    return reply


def user_token(sub: Any = "alice", secret: str = JWT_SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, secret, algorithm="HS256")


def forged_token(header: dict[str, Any], key: bytes | None) -> str:
    """A JWT made by hand, as a forger would: HMAC-SHA256 with ``key``, or a random
    256-byte signature (what an RS256 token looks like) when ``key`` is None."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps({'sub': 'alice'}).encode())}"
    if key is None:
        return f"{signing}.{b64(os.urandom(256))}"
    return f"{signing}.{b64(hmac.new(key, signing.encode(), hashlib.sha256).digest())}"


#: A public key a forger could know: HS/RS confusion signs HS256 with it as the HMAC secret.
PUBLIC_KEY_PEM = (
    b"-----BEGIN PUBLIC KEY-----\n"
    b"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqHkR1x9cJ2Q8f3x2M6o7nYVb1Wc0\n"
    b"-----END PUBLIC KEY-----\n"
)


# -- bad client frames: an error reply, the connection stays open -----------------------------


@dataclass(frozen=True)
class BadFrame:
    frame: str
    code: str
    message: str
    reply_id: Any = NO_ID  # NO_ID: the reply must not carry an id
    setup: tuple[dict[str, Any], ...] = ()  # frames that must succeed first, on the same socket


def case(frame: Any, code: str, message: str, reply_id: Any = NO_ID, **kw: Any) -> BadFrame:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return BadFrame(text, code, message, reply_id, **kw)


SUB = "subscribe"
BAD_FRAMES = [
    # not JSON at all
    pytest.param(case("{", "bad_json", "frame is not valid JSON"), id="invalid-json"),
    pytest.param(case("", "bad_json", "frame is not valid JSON"), id="empty-frame"),
    pytest.param(
        case('{"type": "ping", "id": 1,}', "bad_json", "frame is not valid JSON"),
        id="trailing-comma-id-not-echoed",
    ),
    pytest.param(
        case('{"type": "ping", "id": NaN}', "bad_json", "frame is not valid JSON"), id="nan"
    ),
    pytest.param(
        case(
            '{"type": "subscribe", "topics": ["\\ud800"], "id": 1}',
            "bad_json",
            "frame is not valid JSON",
        ),
        id="lone-surrogate-escape",
    ),
    pytest.param(
        case("[" * 2000 + "]" * 2000, "bad_json", "frame is not valid JSON"),
        id="nesting-deeper-than-parser-limit",
    ),
    # JSON, but not an object
    pytest.param(
        case("[1, 2]", "bad_message", "expected a JSON object, got an array"), id="json-array"
    ),
    pytest.param(case("42", "bad_message", "expected a JSON object, got a number"), id="number"),
    pytest.param(
        case('"ping"', "bad_message", "expected a JSON object, got a string"), id="string"
    ),
    pytest.param(case("null", "bad_message", "expected a JSON object, got null"), id="null"),
    pytest.param(
        case("true", "bad_message", "expected a JSON object, got a boolean"), id="boolean"
    ),
    # the type
    pytest.param(case({}, "bad_message", '"type" is required'), id="empty-object"),
    pytest.param(
        case({"id": 7, "topics": ["BTC-USD"]}, "bad_message", '"type" is required', 7),
        id="missing-type-echoes-id",
    ),
    pytest.param(
        case({"type": None, "id": 7}, "bad_message", '"type" is required', 7), id="type-null"
    ),
    pytest.param(
        case({"type": "publish", "id": 3}, "unknown_type", UNKNOWN_TYPE.format("publish"), 3),
        id="unknown-type",
    ),
    pytest.param(
        case({"type": "PING", "id": "x"}, "unknown_type", UNKNOWN_TYPE.format("PING"), "x"),
        id="type-is-case-sensitive",
    ),
    pytest.param(
        case({"type": "x" * 33, "id": 3}, "unknown_type", UNKNOWN_TYPE.format("x" * 32 + "..."), 3),
        id="long-unknown-type-not-echoed",
    ),
    pytest.param(
        case({"type": 5, "id": 3}, "unknown_type", '"type" must be a string, got a number', 3),
        id="non-string-type-number",
    ),
    pytest.param(
        case(
            {"type": ["ping"], "id": 3}, "unknown_type", '"type" must be a string, got an array', 3
        ),
        id="non-string-type-array",
    ),
    # topics
    pytest.param(case({"type": SUB, "id": 1}, "bad_message", TOPICS_RULE, 1), id="topics-missing"),
    pytest.param(
        case({"type": SUB, "topics": None, "id": 1}, "bad_message", TOPICS_RULE, 1),
        id="topics-null",
    ),
    pytest.param(
        case({"type": SUB, "topics": "BTC-USD", "id": 1}, "bad_message", TOPICS_RULE, 1),
        id="topics-not-a-list",
    ),
    pytest.param(
        case({"type": SUB, "topics": {"BTC-USD": 1}, "id": 1}, "bad_message", TOPICS_RULE, 1),
        id="topics-an-object",
    ),
    pytest.param(
        case({"type": SUB, "topics": [], "id": 1}, "bad_message", TOPICS_RULE, 1),
        id="topics-empty-list",
    ),
    pytest.param(
        case({"type": "unsubscribe", "topics": [], "id": 1}, "bad_message", TOPICS_RULE, 1),
        id="unsubscribe-topics-empty-list",
    ),
    pytest.param(
        case({"type": SUB, "topics": ["BTC-USD", 1], "id": 2}, "invalid_topic", TOPIC_RULE, 2),
        id="topic-is-a-number",
    ),
    pytest.param(
        case({"type": SUB, "topics": ["BTC-USD", None], "id": 2}, "invalid_topic", TOPIC_RULE, 2),
        id="topic-is-null",
    ),
    pytest.param(
        case({"type": SUB, "topics": ["BTC-USD", ""], "id": 2}, "invalid_topic", TOPIC_RULE, 2),
        id="topic-empty-string",
    ),
    pytest.param(
        case(
            {"type": SUB, "topics": ["BTC-USD", "BTC USD"], "id": 2}, "invalid_topic", TOPIC_RULE, 2
        ),
        id="topic-with-space",
    ),
    pytest.param(
        case({"type": SUB, "topics": ["BTC-USD", "BTC€"], "id": 2}, "invalid_topic", TOPIC_RULE, 2),
        id="topic-non-ascii",
    ),
    pytest.param(
        case({"type": SUB, "topics": ["BTC-USD", "a*"], "id": 2}, "invalid_topic", TOPIC_RULE, 2),
        id="topic-embedded-wildcard",
    ),
    pytest.param(
        case(
            {"type": SUB, "topics": ["BTC-USD", "x" * 65], "id": 2}, "invalid_topic", TOPIC_RULE, 2
        ),
        id="topic-65-chars",
    ),
    pytest.param(
        case(
            {"type": "unsubscribe", "topics": ["BTC USD"], "id": 2}, "invalid_topic", TOPIC_RULE, 2
        ),
        id="unsubscribe-invalid-topic",
    ),
    pytest.param(
        case(
            {"type": SUB, "topics": ["BTC-USD", "A", "B", "C"], "id": 4},
            "too_many_topics",
            "at most 3 topics per connection",
            4,
        ),
        id="more-topics-than-max-topics",
    ),
    pytest.param(
        case(
            {"type": SUB, "topics": ["BTC-USD", "C"], "id": 5},
            "too_many_topics",
            "at most 3 topics per connection",
            5,
            setup=({"type": SUB, "topics": ["A", "B"], "id": 1},),
        ),
        id="too-many-topics-across-two-subscribes",
    ),
    # ids: an id that is itself bad cannot be echoed
    pytest.param(case({"type": "ping", "id": True}, "bad_message", ID_RULE), id="id-bool"),
    pytest.param(case({"type": "ping", "id": 1.5}, "bad_message", ID_RULE), id="id-float"),
    pytest.param(case({"type": "ping", "id": 1.0}, "bad_message", ID_RULE), id="id-integral-float"),
    pytest.param(case({"type": "ping", "id": [1]}, "bad_message", ID_RULE), id="id-list"),
    pytest.param(case({"type": "ping", "id": {"a": 1}}, "bad_message", ID_RULE), id="id-object"),
    pytest.param(case({"type": "ping", "id": "x" * 65}, "bad_message", ID_RULE), id="id-65-chars"),
    pytest.param(
        case({"type": "ping", "id": 2**53}, "bad_message", '"id" integers must be within +-2^53'),
        id="id-beyond-2^53",
    ),
    pytest.param(
        case(
            {"type": "ping", "id": -(2**53)}, "bad_message", '"id" integers must be within +-2^53'
        ),
        id="id-below-minus-2^53",
    ),
    pytest.param(
        case({"type": SUB, "topics": ["BTC-USD"], "id": False}, "bad_message", ID_RULE),
        id="subscribe-with-bad-id-is-not-applied",
    ),
    pytest.param(
        case({"type": "nope", "id": 1.5}, "bad_message", ID_RULE),
        id="bad-id-reported-before-bad-type",
    ),
]


@pytest.mark.parametrize("bad", BAD_FRAMES)
async def test_bad_frame_gets_exact_error_and_nobody_is_disturbed(
    start_gateway: StartGateway, bad: BadFrame
) -> None:
    gw = await start_gateway(max_topics=3)
    async with (
        subscribed(gw, "ticker", ["BTC-USD"]) as bystander,
        websockets.connect(gw.ws_url("ticker")) as ws,
    ):
        for frame in bad.setup:
            assert (await request(ws, frame))["type"] == "subscribed"
        errors_before = sample(gw, "wsgateway_client_errors_total", channel="ticker", code=bad.code)

        reply = await request(ws, bad.frame)

        assert reply == error(bad.code, bad.message, bad.reply_id)
        assert sample(gw, "wsgateway_client_errors_total", channel="ticker", code=bad.code) == (
            errors_before + 1
        )
        await still_usable(ws, gw)
        await bystander_still_served(gw, bystander)
        assert ws.close_code is None and bystander.close_code is None


async def test_many_bad_frames_in_a_row_keep_the_connection_open(
    start_gateway: StartGateway,
) -> None:
    """The corpus back to back on one connection: exactly one reply each, in order."""
    cases = [p.values[0] for p in BAD_FRAMES if not p.values[0].setup]
    gw = await start_gateway(max_topics=3)
    async with (
        subscribed(gw, "ticker", ["BTC-USD"]) as bystander,
        websockets.connect(gw.ws_url("ticker")) as ws,
    ):
        for bad in cases:
            await ws.send(bad.frame)
        replies = [await recv_json(ws) for _ in cases]
        assert replies == [error(bad.code, bad.message, bad.reply_id) for bad in cases]
        await still_usable(ws, gw)
        await bystander_still_served(gw, bystander)


async def test_repeated_topic_counts_once_against_max_topics(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(max_topics=3)
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        reply = await request(ws, {"type": SUB, "topics": ["BTC-USD"] * 4, "id": 6})
        assert reply == {
            "type": "subscribed",
            "topics": ["BTC-USD"],
            "positions": {"BTC-USD": {"seq": 0, "epoch": ""}},
            "id": 6,
        }


async def test_integer_id_boundaries_are_echoed(gw: RunningGateway) -> None:
    """The largest accepted ids (+-(2^53 - 1)) and a 64-character string come back as sent."""
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        for request_id in (2**53 - 1, -(2**53 - 1), "x" * 64, "", 0):
            reply = await request(ws, {"type": "ping", "id": request_id})
            assert (reply["type"], reply["id"]) == ("pong", request_id)


# -- the user channel: another user's topic -----------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reply_id"),
    [
        pytest.param({"type": SUB, "topics": ["bob"], "id": 1}, 1, id="other-user"),
        pytest.param({"type": SUB, "topics": ["alice", "bob"], "id": "x"}, "x", id="own-and-other"),
        pytest.param({"type": SUB, "topics": ["bob"]}, NO_ID, id="other-user-without-id"),
        pytest.param(
            {"type": "unsubscribe", "topics": ["bob"], "id": 2}, 2, id="unsubscribe-other"
        ),
    ],
)
async def test_subscribing_to_another_users_id_is_forbidden(
    start_gateway: StartGateway, frame: dict[str, Any], reply_id: Any
) -> None:
    gw = await start_gateway(Settings(jwt_secret=JWT_SECRET))
    bob_query = "?token=" + user_token("bob")
    async with (
        subscribed(gw, "user", ["bob"], bob_query) as bob,
        websockets.connect(gw.ws_url("user", "?token=" + user_token("alice"))) as alice,
    ):
        reply = await request(alice, frame)
        assert reply == error(
            "forbidden_topic",
            "on the user channel you may subscribe only to your own user id",
            reply_id,
        )
        # alice can still use her connection: "*" on the user channel means her own id
        pong = await request(alice, {"type": "ping", "id": 5})
        assert (pong["type"], pong["id"]) == ("pong", 5)
        reply = await request(alice, {"type": SUB, "topics": ["*"], "id": 6})
        assert reply == {
            "type": "subscribed",
            "topics": ["alice"],
            "positions": {"alice": {"seq": 0, "epoch": ""}},
            "id": 6,
        }
        # bob's message reaches bob only; alice's next frame is her own message
        await gw.publish("user", "bob", {"for": "bob"})
        await gw.publish("user", "alice", {"for": "alice"})
        await expect_update(bob, "user", "bob", 1, {"for": "bob"})
        await expect_update(alice, "user", "alice", 1, {"for": "alice"})


# -- frames that close the connection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "text", "close_code", "close_reason", "disconnect"),
    [
        pytest.param(
            b'{"type": "ping", "id": 1}',
            False,
            1003,
            "binary frames are not supported: send JSON text frames",
            "binary_frame",
            id="binary-frame-1003",
        ),
        pytest.param(
            '{"type": "ping", "id": "' + "x" * 1000 + '"}',
            None,
            1009,
            "",
            "message_too_big",
            id="text-over-max-message-size-1009",
        ),
        pytest.param(
            ["x" * 600, "y" * 600],
            None,
            1009,
            "",
            "message_too_big",
            id="fragments-over-max-message-size-1009",
        ),
        pytest.param(
            b"\xff\xfe", True, 1007, "", "invalid_frame", id="invalid-utf8-text-frame-1007"
        ),
        pytest.param(
            b'{"type": "ping", "id": "\xc3\x28"}',
            True,
            1007,
            "",
            "invalid_frame",
            id="invalid-utf8-inside-json-1007",
        ),
        pytest.param(
            [b'{"type": "ping", "id": "\xc3', b'\x28"}'],
            True,
            1007,
            "",
            "invalid_frame",
            id="invalid-utf8-across-fragments-1007",
        ),
    ],
)
async def test_abusive_frame_closes_only_that_connection(
    start_gateway: StartGateway,
    payload: Any,
    text: bool | None,
    close_code: int,
    close_reason: str,
    disconnect: str,
) -> None:
    gw = await start_gateway(max_message_size=1024)
    async with (
        subscribed(gw, "ticker", ["BTC-USD"]) as bystander,
        websockets.connect(gw.ws_url("ticker")) as ws,
    ):
        await ws.send(payload, text=text)
        with pytest.raises(ConnectionClosedError) as closed:
            await recv_json(ws)  # no reply frame comes first: the close does
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == close_code
        assert closed.value.rcvd.reason == close_reason
        assert await wait_closed(ws) == close_code

        await bystander_still_served(gw, bystander)
        await until(
            lambda: (
                sample(gw, "wsgateway_disconnects_total", channel="ticker", reason=disconnect) == 1
            )
        )
        # and the channel still admits and serves new clients
        async with websockets.connect(gw.ws_url("ticker")) as again:
            await still_usable(again, gw)
        await bystander_still_served(gw, bystander, seq=2)


async def test_valid_utf8_split_across_fragments_is_accepted(gw: RunningGateway) -> None:
    """The 1007 cases above are not false positives: é split between two fragments is fine."""
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        await ws.send([b'{"type": "ping", "id": "\xc3', b'\xa9"}'], text=True)
        reply = await recv_json(ws)
        assert (reply["type"], reply["id"]) == ("pong", "é")


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(1023, id="one-below-max"),
        pytest.param(1024, id="exactly-max"),
    ],
)
async def test_frame_up_to_max_message_size_is_accepted(
    start_gateway: StartGateway, size: int
) -> None:
    gw = await start_gateway(max_message_size=1024)
    frame = '{"type": "ping", "id": 1, "pad": ""}'
    frame = frame.replace('""', '"' + "p" * (size - len(frame)) + '"')
    assert len(frame.encode()) == size
    async with websockets.connect(gw.ws_url("ticker")) as ws:
        reply = await request(ws, frame)
        assert (reply["type"], reply["id"]) == ("pong", 1)
        await still_usable(ws, gw)


# -- refused upgrades -----------------------------------------------------------------------------

NO_SECRET = "this channel needs a JWT and the gateway has no jwt_secret set"
MISSING_TOKEN = "missing token: pass ?token=<JWT> or Authorization: Bearer <JWT>"
BAD_SUBJECT = "token subject must be a valid topic (1-64 characters of A-Z a-z 0-9 . _ - : /)"


def _tokens() -> dict[str, tuple[str, str]]:
    """name -> (token, the server's exact message)."""
    now = int(time.time())
    return {
        "garbage": ("not-a-jwt", "invalid token (DecodeError)"),
        "wrong-secret": (
            user_token(secret="another-secret-of-at-least-32-bytes!!"),
            "invalid token (InvalidSignatureError)",
        ),
        "expired": (user_token(exp=now - 60), "token expired"),
        "not-yet-valid": (user_token(nbf=now + 600), "invalid token (ImmatureSignatureError)"),
        "no-sub": (
            jwt.encode({"name": "alice"}, JWT_SECRET, algorithm="HS256"),
            "invalid token (MissingRequiredClaimError)",
        ),
        "alg-none": (
            jwt.encode({"sub": "alice"}, None, algorithm="none"),
            "invalid token (InvalidAlgorithmError)",
        ),
        "alg-hs512": (
            jwt.encode({"sub": "alice"}, JWT_SECRET * 2, algorithm="HS512"),
            "invalid token (InvalidAlgorithmError)",
        ),
        # Forgeries: another algorithm than HS256, however spelt, or the right algorithm
        # with another key (a public key as HMAC secret: HS/RS confusion; an empty key).
        "alg-rs256": (
            forged_token({"alg": "RS256", "typ": "JWT"}, None),
            "invalid token (InvalidAlgorithmError)",
        ),
        "alg-None-capitalised": (
            forged_token({"alg": "None", "typ": "JWT"}, b""),
            "invalid token (InvalidAlgorithmError)",
        ),
        "alg-hs256-lower-case": (
            forged_token({"alg": "hs256", "typ": "JWT"}, JWT_SECRET.encode()),
            "invalid token (InvalidAlgorithmError)",
        ),
        "hs-rs-confusion": (
            forged_token({"alg": "HS256", "typ": "JWT"}, PUBLIC_KEY_PEM),
            "invalid token (InvalidSignatureError)",
        ),
        "empty-key-with-kid": (
            forged_token({"alg": "HS256", "kid": "../../dev/null"}, b""),
            "invalid token (InvalidSignatureError)",
        ),
        "sub-wildcard": (user_token("*"), BAD_SUBJECT),
        "sub-with-space": (user_token("al ice"), BAD_SUBJECT),
    }


@pytest.mark.parametrize("name", list(_tokens()))
@pytest.mark.parametrize("where", ["query", "bearer-header"])
async def test_user_channel_bad_token_is_refused_before_upgrade(
    start_gateway: StartGateway, name: str, where: str
) -> None:
    gw = await start_gateway(Settings(jwt_secret=JWT_SECRET))
    token, message = _tokens()[name]
    query, headers = "?token=" + token, {}
    if where == "bearer-header":
        query, headers = "", {"Authorization": f"Bearer {token}"}
    async with subscribed(gw, "ticker", ["BTC-USD"]) as bystander:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(gw.ws_url("user", query), additional_headers=headers)
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.body) == {"error": "unauthorized", "message": message}
        assert (
            sample(
                gw, "wsgateway_connections_rejected_total", channel="user", reason="unauthorized"
            )
            == 1
        )
        await bystander_still_served(gw, bystander)
        # a good token still gets in
        async with subscribed(gw, "user", ["alice"], "?token=" + user_token()) as alice:
            await gw.publish("user", "alice", {"ok": 1})
            await expect_update(alice, "user", "alice", 1, {"ok": 1})


@pytest.mark.parametrize(
    ("settings", "query", "headers", "message"),
    [
        pytest.param(Settings(), "", {}, NO_SECRET, id="no-jwt-secret-configured"),
        pytest.param(
            Settings(), "?token=" + user_token(), {}, NO_SECRET, id="no-jwt-secret-with-token"
        ),
        pytest.param(Settings(jwt_secret=JWT_SECRET), "", {}, MISSING_TOKEN, id="missing-token"),
        pytest.param(
            Settings(jwt_secret=JWT_SECRET), "?token=", {}, MISSING_TOKEN, id="empty-query-token"
        ),
        pytest.param(
            Settings(jwt_secret=JWT_SECRET),
            "",
            {"Authorization": "Bearer "},
            MISSING_TOKEN,
            id="empty-bearer",
        ),
        pytest.param(
            Settings(jwt_secret=JWT_SECRET),
            "",
            {"Authorization": "Basic " + user_token()},
            MISSING_TOKEN,
            id="basic-scheme-is-not-bearer",
        ),
    ],
)
async def test_user_channel_without_credentials_is_refused(
    start_gateway: StartGateway,
    settings: Settings,
    query: str,
    headers: dict[str, str],
    message: str,
) -> None:
    gw = await start_gateway(settings)
    async with subscribed(gw, "ticker", ["BTC-USD"]) as bystander:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(gw.ws_url("user", query), additional_headers=headers)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body) == {
            "error": "unauthorized",
            "message": message,
        }
        await bystander_still_served(gw, bystander)


ALLOWED_ORIGINS = ("https://app.example.com", "https://*.desk.example.com")


@pytest.mark.parametrize(
    "origin",
    [
        "null",  # a sandboxed iframe, a file: page, a cross-site redirect
        "",
        "https://app.example.com.evil.com",  # the allowed site as a prefix
        "https://evilapp.example.com",  # ... as a suffix without the dot
        "https://app.example.co",
        "http://app.example.com",  # another scheme
        "https://app.example.com:8443",  # another port
        "https://desk.example.com",  # a wildcard covers subdomains, not the domain
        "https://desk.example.com.evil.com",
        "https://evildesk.example.com",
        "http://ny.desk.example.com",
    ],
)
async def test_origin_tricks_are_refused_403(start_gateway: StartGateway, origin: str) -> None:
    gw = await start_gateway(Settings(allowed_origins=ALLOWED_ORIGINS))
    async with subscribed(gw, "ticker", ["BTC-USD"]) as bystander:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(gw.ws_url("ticker"), origin=Origin(origin))
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body) == {
            "error": "forbidden_origin",
            "message": f"origin {origin!r} is not in allowed_origins",
        }
        rejections = sample(
            gw, "wsgateway_connections_rejected_total", channel="ticker", reason="forbidden_origin"
        )
        assert rejections == 1
        await bystander_still_served(gw, bystander)


@pytest.mark.parametrize(
    "origin",
    ["HTTPS://APP.EXAMPLE.COM", "https://NY.Desk.Example.com", "https://a.b.desk.example.com"],
)
async def test_allowed_origins_match_without_regard_to_case_and_at_any_depth(
    start_gateway: StartGateway, origin: str
) -> None:
    gw = await start_gateway(Settings(allowed_origins=ALLOWED_ORIGINS))
    async with websockets.connect(gw.ws_url("ticker"), origin=Origin(origin)) as ws:
        assert await request(ws, {"type": "ping", "id": 1}) == {
            "type": "pong",
            "id": 1,
            "ts": pytest.approx(time.time(), abs=60),
        }


async def test_unknown_channel_is_404_json(gw: RunningGateway) -> None:
    async with subscribed(gw, "ticker", ["BTC-USD"]) as bystander:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(gw.ws_url("nope"))
        assert refused.value.response.status_code == 404
        assert json.loads(refused.value.response.body) == {
            "error": "unknown_channel",
            "message": f"no channel 'nope'; channels: {CHANNELS}",
        }
        async with aiohttp.ClientSession() as http, http.get(gw.http + "/ws/nope") as response:
            assert response.status == 404
            assert response.content_type == "application/json"
            assert (await response.json())["error"] == "unknown_channel"
        assert sample(gw, "wsgateway_unknown_channel_requests_total") == 2
        await bystander_still_served(gw, bystander)


async def test_unknown_channel_name_is_truncated_in_the_reply(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(gw.http + "/ws/" + "n" * 500) as response:
        assert response.status == 404
        body = await response.json()
    assert body == {
        "error": "unknown_channel",
        "message": f"no channel {'n' * 64!r}; channels: {CHANNELS}",
    }


@pytest.mark.parametrize("channel", ["ticker", "user"])
async def test_plain_get_without_upgrade_is_400_json(
    start_gateway: StartGateway, channel: str
) -> None:
    gw = await start_gateway(Settings(jwt_secret=JWT_SECRET))
    async with subscribed(gw, "ticker", ["BTC-USD"]) as bystander:
        async with aiohttp.ClientSession() as http, http.get(gw.ws_url(channel)) as response:
            status, content_type, text = (
                response.status,
                response.content_type,
                await response.text(),
            )
        await bystander_still_served(gw, bystander)
    assert (status, content_type) == (400, "application/json"), text
    body = json.loads(text)
    assert body["message"] == "expected a WebSocket upgrade request"
    assert body["error"] in ("bad_request", "bad_handshake")


# -- POST /api/publish ----------------------------------------------------------------------------

GOOD = {"channel": "ticker", "topic": "BTC-USD", "data": {"price": 1}}
TOKEN_HEADER = {"Authorization": f"Bearer {PUBLISH_TOKEN}"}


def bad_request(field: str, message: str) -> dict[str, str]:
    return {"error": "bad_request", "field": field, "message": message}


def body_of(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


UNKNOWN_CHANNEL = f"unknown channel; configured: {CHANNELS}"
BAD_PUBLISH = [
    pytest.param(b"{", bad_request("body", "not valid JSON"), id="invalid-json"),
    pytest.param(b"", bad_request("body", "not valid JSON"), id="empty-body"),
    pytest.param(
        b'{"channel": "ticker"\xff}', bad_request("body", "not valid JSON"), id="bad-utf8"
    ),
    pytest.param(
        [GOOD], bad_request("body", "expected a JSON object, got an array"), id="json-array"
    ),
    pytest.param(b"3", bad_request("body", "expected a JSON object, got a number"), id="number"),
    pytest.param(b"null", bad_request("body", "expected a JSON object, got null"), id="null"),
    pytest.param(
        {"topic": "BTC-USD", "data": 1}, bad_request("channel", "required"), id="no-channel"
    ),
    pytest.param(
        {**GOOD, "channel": "nope"}, bad_request("channel", UNKNOWN_CHANNEL), id="unknown-channel"
    ),
    pytest.param(
        {**GOOD, "channel": ["ticker"]},
        bad_request("channel", UNKNOWN_CHANNEL),
        id="channel-not-a-string",
    ),
    pytest.param({"channel": "ticker", "data": 1}, bad_request("topic", "required"), id="no-topic"),
    pytest.param(
        {**GOOD, "topic": "BTC USD"}, bad_request("topic", PUBLISH_TOPIC_RULE), id="bad-topic"
    ),
    pytest.param(
        {**GOOD, "topic": "x" * 65}, bad_request("topic", PUBLISH_TOPIC_RULE), id="topic-65-chars"
    ),
    pytest.param(
        {**GOOD, "topic": 7}, bad_request("topic", PUBLISH_TOPIC_RULE), id="topic-a-number"
    ),
    pytest.param(
        {**GOOD, "topic": "*"}, bad_request("topic", PUBLISH_TOPIC_RULE), id="wildcard-topic"
    ),
    pytest.param(
        {"channel": "ticker", "topic": "BTC-USD"}, bad_request("data", "required"), id="no-data"
    ),
    pytest.param(
        {"messages": GOOD},
        bad_request("messages", "expected a non-empty list of messages"),
        id="batch-not-a-list",
    ),
    pytest.param(
        {"messages": None},
        bad_request("messages", "expected a non-empty list of messages"),
        id="batch-null",
    ),
    pytest.param(
        {"messages": []},
        bad_request("messages", "expected a non-empty list of messages"),
        id="empty-batch",
    ),
    pytest.param(
        {"messages": [GOOD, GOOD, {**GOOD, "topic": "*"}]},
        bad_request("messages[2].topic", PUBLISH_TOPIC_RULE),
        id="batch-bad-topic-at-index-2",
    ),
    pytest.param(
        {"messages": [GOOD, {"channel": "ticker", "topic": "BTC-USD"}]},
        bad_request("messages[1].data", "required"),
        id="batch-missing-data-at-index-1",
    ),
    pytest.param(
        {"messages": [GOOD, GOOD, {**GOOD, "channel": "nope"}]},
        bad_request("messages[2].channel", UNKNOWN_CHANNEL),
        id="batch-unknown-channel-at-index-2",
    ),
    pytest.param(
        {"messages": [GOOD, 5]},
        bad_request("messages[1]", "expected a JSON object, got a number"),
        id="batch-item-not-an-object",
    ),
    pytest.param(
        {"messages": [GOOD] * 10_001},
        bad_request("messages", "at most 10000 messages per request"),
        id="batch-over-10000",
    ),
]


@asynccontextmanager
async def publish_setup(
    start_gateway: StartGateway, settings: Settings | None = None
) -> AsyncIterator[tuple[RunningGateway, websockets.ClientConnection, aiohttp.ClientSession]]:
    """A gateway, a client subscribed to every ticker topic, and an HTTP session."""
    gw = await start_gateway(settings or Settings(publish_token=PUBLISH_TOKEN))
    async with (
        subscribed(gw, "ticker", ["*"]) as subscriber,
        aiohttp.ClientSession(base_url=gw.http) as http,
    ):
        yield gw, subscriber, http


async def post(
    http: aiohttp.ClientSession, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    if isinstance(body, bytes):
        body = io.BytesIO(body)  # aiohttp warns about large raw bytes bodies
    async with http.post(
        "/api/publish", data=body, headers=TOKEN_HEADER if headers is None else headers
    ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def nothing_was_published(
    gw: RunningGateway, subscriber: websockets.ClientConnection, http: aiohttp.ClientSession
) -> None:
    """The next good message is the first of its topic, and the first one published at all."""
    published = "wsgateway_messages_published_total"
    assert sample(gw, published, channel="ticker") == 0
    assert await post(http, body_of(GOOD)) == (200, {"accepted": 1})
    await expect_update(subscriber, "ticker", "BTC-USD", 1, GOOD["data"])
    assert sample(gw, published, channel="ticker") == 1


@pytest.mark.parametrize(("body", "expected"), BAD_PUBLISH)
async def test_bad_publish_body_is_400_naming_the_field(
    start_gateway: StartGateway, body: Any, expected: dict[str, str]
) -> None:
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        assert await post(http, body_of(body)) == (400, expected)
        await nothing_was_published(gw, subscriber, http)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {PUBLISH_TOKEN.upper()}"}, id="wrong-case"),
        pytest.param({"Authorization": f"Bearer {PUBLISH_TOKEN}x"}, id="token-prefix-only"),
        pytest.param({"Authorization": f"Bearer {PUBLISH_TOKEN[:-1]}"}, id="truncated-token"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"Authorization": PUBLISH_TOKEN}, id="no-scheme"),
        pytest.param({"Authorization": f"Basic {PUBLISH_TOKEN}"}, id="basic-scheme"),
        pytest.param({"X-Publish-Token": PUBLISH_TOKEN}, id="other-header"),
    ],
)
async def test_publish_without_the_right_token_is_401(
    start_gateway: StartGateway, headers: dict[str, str]
) -> None:
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        status, body = await post(http, body_of(GOOD), headers)
        assert (status, body) == (
            401,
            {
                "error": "unauthorized",
                "field": "Authorization",
                "message": "expected Authorization: Bearer <publish token>",
            },
        )
        # the token is checked first: a bad body without the token is still a 401
        assert (await post(http, b"{", headers))[0] == 401
        await nothing_was_published(gw, subscriber, http)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_publish_body_over_the_limit_is_413(
    start_gateway: StartGateway, chunked: bool
) -> None:
    document = {**GOOD, "data": "x" * MAX_PUBLISH_BODY}  # valid JSON, just too large
    raw = body_of(document)
    assert len(raw) > MAX_PUBLISH_BODY

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1 << 20):
            yield raw[start : start + (1 << 20)]

    async with publish_setup(start_gateway) as (gw, subscriber, http):
        status, body = await post(http, pieces() if chunked else raw)
        assert (status, body) == (
            413,
            {
                "error": "too_large",
                "field": "body",
                "message": f"body larger than {MAX_PUBLISH_BODY} bytes",
            },
        )
        await nothing_was_published(gw, subscriber, http)


async def test_publish_body_of_exactly_the_limit_is_accepted(
    start_gateway: StartGateway,
) -> None:
    document = {"channel": "trades", "topic": "BTC-USD", "data": ""}  # nobody listens there
    filler = MAX_PUBLISH_BODY - len(body_of(document))
    raw = body_of({**document, "data": "x" * filler})
    assert len(raw) == MAX_PUBLISH_BODY
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        assert await post(http, raw) == (200, {"accepted": 1})
        await nothing_was_published(gw, subscriber, http)  # ticker untouched


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(TOKEN_HEADER, id="bearer"),
        pytest.param({"Authorization": f"bearer {PUBLISH_TOKEN}"}, id="lowercase-scheme"),
    ],
)
async def test_good_publish_is_accepted_and_gap_free(
    start_gateway: StartGateway, headers: dict[str, str]
) -> None:
    async with publish_setup(start_gateway) as (gw, subscriber, http):
        assert await post(http, body_of(GOOD), headers) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 1, {"price": 1})
        batch = {
            "messages": [
                {"channel": "ticker", "topic": "BTC-USD", "data": {"price": 2}},
                {"channel": "ticker", "topic": "ETH-USD", "data": {"price": 10}},
                {"channel": "ticker", "topic": "BTC-USD", "data": None},
            ]
        }
        assert await post(http, body_of(batch), headers) == (200, {"accepted": 3})
        await expect_update(subscriber, "ticker", "BTC-USD", 2, {"price": 2})
        await expect_update(subscriber, "ticker", "ETH-USD", 1, {"price": 10})
        await expect_update(subscriber, "ticker", "BTC-USD", 3, None)
        # a rejected batch in between leaves no gap
        assert (await post(http, body_of({"messages": [GOOD, {}]}), headers))[0] == 400
        assert await post(http, body_of(GOOD), headers) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 4, {"price": 1})
        assert sample(gw, "wsgateway_messages_published_total", channel="ticker") == 5


async def test_loopback_may_publish_when_no_token_is_configured(
    start_gateway: StartGateway,
) -> None:
    json_body = {"Content-Type": "application/json"}  # the loopback rule wants JSON
    async with publish_setup(start_gateway, Settings()) as (_gw, subscriber, http):
        assert await post(http, body_of(GOOD), json_body) == (200, {"accepted": 1})
        await expect_update(subscriber, "ticker", "BTC-USD", 1, {"price": 1})
        assert await post(http, b"[]", json_body) == (
            400,
            bad_request("body", "expected a JSON object, got an array"),
        )
