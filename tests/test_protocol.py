"""Unit tests for wsgateway.protocol: client frames, server frames, the publish body."""

from __future__ import annotations

import json
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgateway.brokers.base import Message
from wsgateway.errors import (
    BadJson,
    BadMessage,
    ClientError,
    InvalidTopic,
    PublishError,
    TooManyTopics,
    UnknownType,
    UnsupportedEncoding,
)
from wsgateway.protocol import (
    INTEGER_RULE,
    MAX_DATA_DEPTH,
    MAX_PUBLISH_BATCH,
    TOPIC_RULE,
    Ping,
    Subscribe,
    Unsubscribe,
    WideInteger,
    check_content_encoding,
    encode_data,
    error,
    heartbeat,
    is_valid_topic,
    load_publish_body,
    parse_publish,
    parse_request,
    pong,
    pong_frame,
    subscribed,
    text_frame,
    unsubscribed,
    update,
)

MAX_TOPICS = 5
CHANNELS = ("market", "ticker", "orderbook", "trades", "user")
TOPICS_RULE = '"topics" must be a non-empty list of strings'
ID_RULE = '"id" must be an integer or a string of at most 64 characters'
TYPE_RULE = "expected subscribe, unsubscribe or ping"


def frame(**fields: Any) -> str:
    return json.dumps(fields)


# -- parse_request: valid frames --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{"type": "subscribe", "topics": ["BTC-USD", "ETH-USD"], "id": 1}',
            Subscribe(("BTC-USD", "ETH-USD"), 1),
            id="subscribe-int-id",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["BTC-USD"], "id": "req-1"}',
            Subscribe(("BTC-USD",), "req-1"),
            id="subscribe-str-id",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["BTC-USD"]}',
            Subscribe(("BTC-USD",), None),
            id="subscribe-no-id",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["BTC-USD"], "id": null}',
            Subscribe(("BTC-USD",), None),
            id="subscribe-null-id",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["*"], "id": 0}',
            Subscribe(("*",), 0),
            id="subscribe-wildcard",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["*", "BTC-USD"]}',
            Subscribe(("*", "BTC-USD"), None),
            id="subscribe-wildcard-and-topic",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["B", "A", "B", "C", "A"]}',
            Subscribe(("B", "A", "C"), None),
            id="duplicates-collapsed-in-order",
        ),
        pytest.param(
            '{"type": "subscribe", "topics": ["a.b_c-d:e/f", "Z9"]}',
            Subscribe(("a.b_c-d:e/f", "Z9"), None),
            id="every-allowed-character",
        ),
        pytest.param(
            json.dumps({"type": "subscribe", "topics": ["T" * 64]}),
            Subscribe(("T" * 64,), None),
            id="64-char-topic",
        ),
        pytest.param(
            json.dumps({"type": "subscribe", "topics": [f"S{i}" for i in range(MAX_TOPICS)]}),
            Subscribe(tuple(f"S{i}" for i in range(MAX_TOPICS)), None),
            id="max-topics",
        ),
        pytest.param(
            '{"type": "unsubscribe", "topics": ["ETH-USD"], "id": 2}',
            Unsubscribe(("ETH-USD",), 2),
            id="unsubscribe",
        ),
        pytest.param(
            '{"type": "unsubscribe", "topics": ["*"]}',
            Unsubscribe(("*",), None),
            id="unsubscribe-wildcard",
        ),
        pytest.param('{"type": "ping", "id": 3}', Ping(3), id="ping-int-id"),
        pytest.param('{"type": "ping", "id": "p"}', Ping("p"), id="ping-str-id"),
        pytest.param('{"type": "ping"}', Ping(None), id="ping-no-id"),
        pytest.param(
            '{"type": "ping", "topics": "ignored", "extra": [1]}', Ping(None), id="ping-extra"
        ),
        pytest.param(json.dumps({"type": "ping", "id": "i" * 64}), Ping("i" * 64), id="64-char-id"),
        pytest.param(
            json.dumps({"type": "ping", "id": 2**53 - 1}), Ping(2**53 - 1), id="max-int-id"
        ),
        pytest.param(
            json.dumps({"type": "ping", "id": -(2**53) + 1}),
            Ping(-(2**53) + 1),
            id="min-int-id",
        ),
        pytest.param('{"type": "ping", "id": ""}', Ping(""), id="empty-str-id"),
    ],
)
def test_parse_request_valid(text: str, expected: object) -> None:
    assert parse_request(text, MAX_TOPICS) == expected


def test_parse_request_accepts_bytes() -> None:
    text = b'{"type": "subscribe", "topics": ["BTC-USD"], "id": 9}'
    assert parse_request(text, MAX_TOPICS) == Subscribe(("BTC-USD",), 9)


def test_parse_request_returns_tuples() -> None:
    request = parse_request('{"type": "subscribe", "topics": ["A"]}', MAX_TOPICS)
    assert isinstance(request, Subscribe)
    assert request.topics == ("A",)
    assert isinstance(request.topics, tuple)


# -- parse_request: bad frames ----------------------------------------------------------------

BAD_FRAMES = [
    # (frame, error class, code, message, request id carried)
    pytest.param("{", BadJson, "bad_json", "frame is not valid JSON", None, id="truncated"),
    pytest.param("", BadJson, "bad_json", "frame is not valid JSON", None, id="empty"),
    pytest.param(
        "{'type': 'ping'}", BadJson, "bad_json", "frame is not valid JSON", None, id="single-quotes"
    ),
    pytest.param(
        b"\xff\xfe", BadJson, "bad_json", "frame is not valid JSON", None, id="invalid-utf8"
    ),
    pytest.param(
        "[]", BadMessage, "bad_message", "expected a JSON object, got an array", None, id="array"
    ),
    pytest.param(
        '[{"type": "ping"}]',
        BadMessage,
        "bad_message",
        "expected a JSON object, got an array",
        None,
        id="array-of-object",
    ),
    pytest.param(
        "42", BadMessage, "bad_message", "expected a JSON object, got a number", None, id="number"
    ),
    pytest.param(
        "1.5", BadMessage, "bad_message", "expected a JSON object, got a number", None, id="float"
    ),
    pytest.param(
        '"ping"', BadMessage, "bad_message", "expected a JSON object, got a string", None, id="str"
    ),
    pytest.param(
        "null", BadMessage, "bad_message", "expected a JSON object, got null", None, id="null"
    ),
    pytest.param(
        "true", BadMessage, "bad_message", "expected a JSON object, got a boolean", None, id="bool"
    ),
    pytest.param("{}", BadMessage, "bad_message", '"type" is required', None, id="missing-type"),
    pytest.param(
        '{"id": 5, "topics": ["A"]}',
        BadMessage,
        "bad_message",
        '"type" is required',
        5,
        id="missing-type-with-id",
    ),
    pytest.param(
        '{"type": null, "id": "x"}',
        BadMessage,
        "bad_message",
        '"type" is required',
        "x",
        id="null-type",
    ),
    pytest.param(
        '{"type": "publish", "id": 4}',
        UnknownType,
        "unknown_type",
        f"unknown type 'publish'; {TYPE_RULE}",
        4,
        id="unknown-type",
    ),
    pytest.param(
        '{"type": "Subscribe", "topics": ["A"]}',
        UnknownType,
        "unknown_type",
        f"unknown type 'Subscribe'; {TYPE_RULE}",
        None,
        id="wrong-case-type",
    ),
    pytest.param(
        json.dumps({"type": "x" * 33}),
        UnknownType,
        "unknown_type",
        f"unknown type '{'x' * 32}...'; {TYPE_RULE}",
        None,
        id="long-type-not-echoed",
    ),
    pytest.param(
        json.dumps({"type": "x" * 32}),
        UnknownType,
        "unknown_type",
        f"unknown type '{'x' * 32}'; {TYPE_RULE}",
        None,
        id="type-of-32-characters-echoed-whole",
    ),
    pytest.param(
        '{"type": 1, "id": 6}',
        UnknownType,
        "unknown_type",
        '"type" must be a string, got a number',
        6,
        id="number-type",
    ),
    pytest.param(
        '{"type": ["subscribe"]}',
        UnknownType,
        "unknown_type",
        '"type" must be a string, got an array',
        None,
        id="array-type",
    ),
    pytest.param(
        '{"type": {"a": 1}}',
        UnknownType,
        "unknown_type",
        '"type" must be a string, got an object',
        None,
        id="object-type",
    ),
    pytest.param(
        '{"type": true}',
        UnknownType,
        "unknown_type",
        '"type" must be a string, got a boolean',
        None,
        id="bool-type",
    ),
    pytest.param(
        '{"type": "subscribe", "id": 7}',
        BadMessage,
        "bad_message",
        TOPICS_RULE,
        7,
        id="topics-missing",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": "BTC-USD", "id": "s"}',
        BadMessage,
        "bad_message",
        TOPICS_RULE,
        "s",
        id="topics-string",
    ),
    pytest.param(
        '{"type": "unsubscribe", "topics": {"BTC-USD": true}}',
        BadMessage,
        "bad_message",
        TOPICS_RULE,
        None,
        id="topics-object",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": null}',
        BadMessage,
        "bad_message",
        TOPICS_RULE,
        None,
        id="topics-null",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": [], "id": 8}',
        BadMessage,
        "bad_message",
        TOPICS_RULE,
        8,
        id="topics-empty",
    ),
    pytest.param(
        '{"type": "unsubscribe", "topics": []}',
        BadMessage,
        "bad_message",
        TOPICS_RULE,
        None,
        id="unsubscribe-topics-empty",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": ["A", 5], "id": 9}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        9,
        id="topic-number",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": [null]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-null",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": [["A"]]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-list",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": [""]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-empty",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": ["BTC USD"]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-space",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": ["BTC*"]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-partial-wildcard",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": ["BTC\\nUSD"]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-newline",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": ["BTC-USD\\n"]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-trailing-newline",
    ),
    pytest.param(
        '{"type": "subscribe", "topics": ["\\u00e9t\\u00e9"]}',
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        None,
        id="topic-non-ascii",
    ),
    pytest.param(
        json.dumps({"type": "subscribe", "topics": ["T" * 65], "id": 10}),
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        10,
        id="topic-65-chars",
    ),
    pytest.param(
        json.dumps({"type": "unsubscribe", "topics": ["ok", "bad topic"], "id": "u"}),
        InvalidTopic,
        "invalid_topic",
        TOPIC_RULE,
        "u",
        id="unsubscribe-bad-topic",
    ),
    pytest.param(
        json.dumps({"type": "subscribe", "topics": [f"S{i}" for i in range(MAX_TOPICS + 1)]}),
        TooManyTopics,
        "too_many_topics",
        f"at most {MAX_TOPICS} topics per connection",
        None,
        id="too-many-topics",
    ),
    pytest.param(
        json.dumps(
            {"type": "subscribe", "topics": [f"S{i}" for i in range(MAX_TOPICS + 1)], "id": 11}
        ),
        TooManyTopics,
        "too_many_topics",
        f"at most {MAX_TOPICS} topics per connection",
        11,
        id="too-many-topics-with-id",
    ),
    pytest.param(
        '{"type": "ping", "id": true}', BadMessage, "bad_message", ID_RULE, None, id="id-bool"
    ),
    pytest.param(
        '{"type": "ping", "id": 1.5}', BadMessage, "bad_message", ID_RULE, None, id="id-float"
    ),
    pytest.param(
        '{"type": "ping", "id": 1.0}',
        BadMessage,
        "bad_message",
        ID_RULE,
        None,
        id="id-integral-float",
    ),
    pytest.param(
        '{"type": "ping", "id": {"n": 1}}',
        BadMessage,
        "bad_message",
        ID_RULE,
        None,
        id="id-object",
    ),
    pytest.param(
        '{"type": "ping", "id": [1]}', BadMessage, "bad_message", ID_RULE, None, id="id-array"
    ),
    pytest.param(
        json.dumps({"type": "ping", "id": "i" * 65}),
        BadMessage,
        "bad_message",
        ID_RULE,
        None,
        id="id-65-chars",
    ),
    pytest.param(
        json.dumps({"type": "ping", "id": 2**53}),
        BadMessage,
        "bad_message",
        '"id" integers must be within +-2^53',
        None,
        id="id-2^53",
    ),
    pytest.param(
        json.dumps({"type": "ping", "id": -(2**53)}),
        BadMessage,
        "bad_message",
        '"id" integers must be within +-2^53',
        None,
        id="id-minus-2^53",
    ),
    pytest.param(
        json.dumps({"type": "ping", "id": 2**63}),
        BadMessage,
        "bad_message",
        '"id" integers must be within +-2^53',
        None,
        id="id-2^63",
    ),
    pytest.param(
        json.dumps({"type": "publish", "id": True}),
        BadMessage,
        "bad_message",
        ID_RULE,
        None,
        id="bad-id-checked-before-type",
    ),
]


@pytest.mark.parametrize(("text", "cls", "code", "message", "request_id"), BAD_FRAMES)
def test_parse_request_bad_frames(
    text: str | bytes,
    cls: type[ClientError],
    code: str,
    message: str,
    request_id: int | str | None,
) -> None:
    with pytest.raises(ClientError) as info:
        parse_request(text, MAX_TOPICS)
    exc = info.value
    assert type(exc) is cls
    assert exc.code == code
    assert exc.message == message
    assert str(exc) == message
    assert exc.request_id == request_id


def test_error_codes_are_the_spec_words() -> None:
    assert BadJson.code == "bad_json"
    assert BadMessage.code == "bad_message"
    assert UnknownType.code == "unknown_type"
    assert InvalidTopic.code == "invalid_topic"
    assert TooManyTopics.code == "too_many_topics"


@pytest.mark.parametrize(
    ("topic", "allow_wildcard", "expected"),
    [
        ("BTC-USD", True, True),
        ("*", True, True),
        ("*", False, False),
        ("", True, False),
        ("T" * 64, False, True),
        ("T" * 65, False, False),
        (None, True, False),
        (5, True, False),
        ("a b", True, False),
    ],
)
def test_is_valid_topic(topic: object, allow_wildcard: bool, expected: bool) -> None:
    assert is_valid_topic(topic, allow_wildcard=allow_wildcard) is expected


# -- text_frame -------------------------------------------------------------------------------


def decode_server_frame(data: bytes) -> tuple[bool, int, int, bytes]:
    """Decode one unmasked frame per RFC 6455 5.2: (fin, rsv, opcode, payload)."""
    first, second = data[0], data[1]
    fin = bool(first & 0x80)
    rsv = (first >> 4) & 0x07
    opcode = first & 0x0F
    assert second & 0x80 == 0, "server frames must not be masked"
    length = second & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", data[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", data[2:10])
        assert length >> 63 == 0, "most significant bit must be 0"
        offset = 10
    payload = data[offset:]
    assert len(payload) == length
    return fin, rsv, opcode, payload


@pytest.mark.parametrize(
    ("length", "header"),
    [
        pytest.param(0, b"\x81\x00", id="0"),
        pytest.param(1, b"\x81\x01", id="1"),
        pytest.param(125, b"\x81\x7d", id="125"),
        pytest.param(126, b"\x81\x7e\x00\x7e", id="126"),
        pytest.param(127, b"\x81\x7e\x00\x7f", id="127"),
        pytest.param(65535, b"\x81\x7e\xff\xff", id="65535"),
        pytest.param(65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00", id="65536"),
    ],
)
def test_text_frame_header(length: int, header: bytes) -> None:
    payload = bytes(i % 251 for i in range(length))
    data = text_frame(payload)
    assert data == header + payload
    fin, rsv, opcode, decoded = decode_server_frame(data)
    assert fin is True
    assert rsv == 0
    assert opcode == 0x1
    assert decoded == payload


def test_text_frame_uses_the_shortest_length_encoding() -> None:
    assert len(text_frame(b"x" * 125)) == 2 + 125
    assert len(text_frame(b"x" * 126)) == 4 + 126
    assert len(text_frame(b"x" * 65535)) == 4 + 65535
    assert len(text_frame(b"x" * 65536)) == 10 + 65536


# -- server frames ----------------------------------------------------------------------------


def test_subscribed_frame() -> None:
    assert json.loads(subscribed(("BTC-USD", "ETH-USD"), 1)) == {
        "type": "subscribed",
        "id": 1,
        "topics": ["BTC-USD", "ETH-USD"],
    }


def test_subscribed_frame_carries_the_positions_given() -> None:
    positions = {"BTC-USD": {"seq": 41, "epoch": "e1", "recovered": True}}
    assert json.loads(subscribed(("BTC-USD",), 7, positions)) == {
        "type": "subscribed",
        "topics": ["BTC-USD"],
        "positions": positions,
        "id": 7,
    }


def test_subscribed_frame_without_id_has_no_id() -> None:
    assert json.loads(subscribed(("*",), None)) == {"type": "subscribed", "topics": ["*"]}


def test_unsubscribed_frame() -> None:
    assert json.loads(unsubscribed(("ETH-USD",), "two")) == {
        "type": "unsubscribed",
        "id": "two",
        "topics": ["ETH-USD"],
    }
    assert json.loads(unsubscribed(("ETH-USD",), None)) == {
        "type": "unsubscribed",
        "topics": ["ETH-USD"],
    }


def test_pong_frame() -> None:
    assert json.loads(pong(3, 1732900000.123)) == {"type": "pong", "id": 3, "ts": 1732900000.123}
    assert json.loads(pong(None, 5.5)) == {"type": "pong", "ts": 5.5}


def test_pong_frame_keeps_id_zero() -> None:
    assert json.loads(pong(0, 1.0)) == {"type": "pong", "id": 0, "ts": 1.0}


def test_error_frame() -> None:
    assert json.loads(error("invalid_topic", TOPIC_RULE, 1)) == {
        "type": "error",
        "id": 1,
        "code": "invalid_topic",
        "message": TOPIC_RULE,
    }
    assert json.loads(error("bad_json", "frame is not valid JSON")) == {
        "type": "error",
        "code": "bad_json",
        "message": "frame is not valid JSON",
    }


def test_error_frame_extra_fields() -> None:
    assert json.loads(error("rate_limited", "slow down", None, retry_after=0.5)) == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
        "retry_after": 0.5,
    }


def test_update_frame() -> None:
    data = {"price": 65000.5, "size": [1, 2], "note": "ünïcode"}
    body = update("ticker", "BTC-USD", 42, 1732900000.12, data)
    assert json.loads(body) == {
        "type": "update",
        "channel": "ticker",
        "topic": "BTC-USD",
        "seq": 42,
        "ts": 1732900000.12,
        "data": data,
    }
    body.decode("utf-8")  # valid UTF-8 text


def test_server_frames_are_compact_bytes() -> None:
    assert pong(1, 2.0) == b'{"type":"pong","ts":2.0,"id":1}'


# -- parse_publish ----------------------------------------------------------------------------


def decoded(messages: list[Message]) -> list[Message]:
    """``messages`` with each ``data`` (an orjson.Fragment of encoded JSON) decoded again."""
    return [Message(m.channel, m.topic, orjson.loads(orjson.dumps(m.data))) for m in messages]


def test_parse_publish_single_message() -> None:
    body = {"channel": "ticker", "topic": "BTC-USD", "data": {"price": 65000}}
    messages = parse_publish(body, CHANNELS)
    assert decoded(messages) == [Message("ticker", "BTC-USD", {"price": 65000})]
    # Encoded once, here: the broadcast embeds these bytes as they are.
    assert isinstance(messages[0].data, orjson.Fragment)
    assert orjson.dumps({"data": messages[0].data}) == b'{"data":{"price":65000}}'


@pytest.mark.parametrize("data", [None, 0, "text", [1, 2], {"nested": {"a": [None]}}])
def test_parse_publish_any_json_data(data: object) -> None:
    body = {"channel": "user", "topic": "alice", "data": data}
    assert decoded(parse_publish(body, CHANNELS)) == [Message("user", "alice", data)]


def test_parse_publish_batch() -> None:
    body = {
        "messages": [
            {"channel": "ticker", "topic": "BTC-USD", "data": {"p": 1}},
            {"channel": "trades", "topic": "ETH-USD", "data": [1, 2]},
            {"channel": "ticker", "topic": "BTC-USD", "data": None},
        ]
    }
    assert decoded(parse_publish(body, CHANNELS)) == [
        Message("ticker", "BTC-USD", {"p": 1}),
        Message("trades", "ETH-USD", [1, 2]),
        Message("ticker", "BTC-USD", None),
    ]


def test_parse_publish_batch_at_the_maximum() -> None:
    item = {"channel": "ticker", "topic": "T", "data": 1}
    messages = parse_publish({"messages": [item] * MAX_PUBLISH_BATCH}, CHANNELS)
    assert len(messages) == MAX_PUBLISH_BATCH


def test_parse_publish_respects_configured_channels() -> None:
    body = {"channel": "ticker", "topic": "BTC-USD", "data": 1}
    with pytest.raises(PublishError) as info:
        parse_publish(body, ("market",))
    assert info.value.field == "channel"
    assert info.value.message == "unknown channel; configured: market"


GOOD = {"channel": "ticker", "topic": "BTC-USD", "data": 1}
TOPIC_MESSAGE = "topic must be 1-64 characters of A-Z a-z 0-9 . _ - : /"
CHANNEL_MESSAGE = "unknown channel; configured: " + ", ".join(CHANNELS)

BAD_BODIES = [
    pytest.param([GOOD], "body", "expected a JSON object, got an array", id="array"),
    pytest.param("hello", "body", "expected a JSON object, got a string", id="string"),
    pytest.param(None, "body", "expected a JSON object, got null", id="null"),
    pytest.param(3, "body", "expected a JSON object, got a number", id="number"),
    pytest.param({}, "channel", "required", id="empty-object"),
    pytest.param({"topic": "BTC-USD", "data": 1}, "channel", "required", id="no-channel"),
    pytest.param({**GOOD, "channel": "options"}, "channel", CHANNEL_MESSAGE, id="unknown-channel"),
    pytest.param({**GOOD, "channel": 1}, "channel", CHANNEL_MESSAGE, id="channel-number"),
    pytest.param({**GOOD, "channel": ["ticker"]}, "channel", CHANNEL_MESSAGE, id="channel-list"),
    pytest.param({**GOOD, "channel": "TICKER"}, "channel", CHANNEL_MESSAGE, id="channel-case"),
    pytest.param({"channel": "ticker", "data": 1}, "topic", "required", id="no-topic"),
    pytest.param({**GOOD, "topic": "*"}, "topic", TOPIC_MESSAGE, id="wildcard-topic"),
    pytest.param({**GOOD, "topic": ""}, "topic", TOPIC_MESSAGE, id="empty-topic"),
    pytest.param({**GOOD, "topic": "T" * 65}, "topic", TOPIC_MESSAGE, id="long-topic"),
    pytest.param({**GOOD, "topic": "a b"}, "topic", TOPIC_MESSAGE, id="topic-space"),
    pytest.param({**GOOD, "topic": 7}, "topic", TOPIC_MESSAGE, id="topic-number"),
    pytest.param({"channel": "ticker", "topic": "BTC-USD"}, "data", "required", id="no-data"),
    pytest.param(
        {"messages": "x"}, "messages", "expected a non-empty list of messages", id="not-list"
    ),
    pytest.param({"messages": {}}, "messages", "expected a non-empty list of messages", id="obj"),
    pytest.param(
        {"messages": None}, "messages", "expected a non-empty list of messages", id="null-list"
    ),
    pytest.param(
        {"messages": []}, "messages", "expected a non-empty list of messages", id="empty-batch"
    ),
    pytest.param(
        {"messages": [GOOD] * (MAX_PUBLISH_BATCH + 1)},
        "messages",
        f"at most {MAX_PUBLISH_BATCH} messages per request",
        id="batch-too-big",
    ),
    pytest.param(
        {"messages": [GOOD, 5]},
        "messages[1]",
        "expected a JSON object, got a number",
        id="item-number",
    ),
    pytest.param(
        {"messages": [[GOOD]]},
        "messages[0]",
        "expected a JSON object, got an array",
        id="item-array",
    ),
    pytest.param(
        {"messages": [GOOD, GOOD, None]},
        "messages[2]",
        "expected a JSON object, got null",
        id="item-null",
    ),
    pytest.param(
        {"messages": [GOOD, {**GOOD, "topic": "*"}]},
        "messages[1].topic",
        TOPIC_MESSAGE,
        id="item-wildcard-topic",
    ),
    pytest.param(
        {"messages": [{**GOOD, "channel": "nope"}]},
        "messages[0].channel",
        CHANNEL_MESSAGE,
        id="item-unknown-channel",
    ),
    pytest.param(
        {"messages": [GOOD, GOOD, GOOD, {"channel": "ticker", "topic": "X"}]},
        "messages[3].data",
        "required",
        id="item-no-data",
    ),
    pytest.param(
        {"messages": [{**GOOD, "topic": "bad topic"}, {**GOOD, "channel": "nope"}]},
        "messages[0].topic",
        TOPIC_MESSAGE,
        id="first-bad-item-wins",
    ),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_BODIES)
def test_parse_publish_bad_bodies(body: object, field: str, message: str) -> None:
    with pytest.raises(PublishError) as info:
        parse_publish(body, CHANNELS)
    exc = info.value
    assert type(exc) is PublishError
    assert exc.field == field
    assert exc.message == message
    assert str(exc) == f"{field}: {message}"
    assert exc.status == 400


# -- data that parses but cannot be carried ----------------------------------------------------


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_data_as_deep_as_the_encoder_allows_is_accepted() -> None:
    body = {"channel": "ticker", "topic": "T", "data": nested(MAX_DATA_DEPTH)}
    (message,) = parse_publish(body, CHANNELS)
    # Embedded one level deeper in the update frame, it still encodes.
    frame = update("ticker", "T", 1, 0.0, message.data)
    assert orjson.loads(frame)["data"] == nested(MAX_DATA_DEPTH)


def test_data_deeper_than_the_encoder_allows_names_the_message() -> None:
    deep = {"channel": "ticker", "topic": "T", "data": nested(MAX_DATA_DEPTH + 1)}
    with pytest.raises(PublishError) as info:
        parse_publish({"messages": [GOOD, GOOD, GOOD, deep]}, CHANNELS)
    assert info.value.status == 400
    assert info.value.field == "messages[3].data"
    assert info.value.message == "nested deeper than 254 levels of arrays and objects"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"n": 2**64}, INTEGER_RULE, id="python-int-over-u64"),
        pytest.param([-(2**63) - 1], INTEGER_RULE, id="python-int-under-i64"),
        pytest.param({1: "x"}, "cannot be encoded as JSON (Dict key must be str)", id="int-key"),
        pytest.param(
            {"s": {1}}, "cannot be encoded as JSON (Type is not JSON serializable: set)", id="set"
        ),
    ],
)
def test_python_data_that_cannot_be_encoded(data: object, message: str) -> None:
    """The Python API (Gateway.publish) hands in Python values: the same check holds."""
    with pytest.raises(PublishError) as info:
        encode_data(data)
    assert (info.value.field, info.value.message) == ("data", message)


def test_a_body_too_deep_for_the_exact_integer_parse_is_refused_not_raised() -> None:
    # orjson takes 1,000 levels; the parse that keeps wide integers exact (a long run of
    # digits sends the body there) hits Python's recursion limit first.
    depth = 1000
    body = b'{"channel":"ticker","topic":"T","data":%s12345678901234567890%s}' % (
        b"[" * depth,
        b"]" * depth,
    )
    with pytest.raises(PublishError) as info:
        load_publish_body(body)
    assert (info.value.status, info.value.field, info.value.message) == (
        400,
        "body",
        "nested too deeply",
    )


def test_integers_at_the_edges_of_the_exact_range_stay_integers() -> None:
    body = b'{"channel":"ticker","topic":"T","data":[18446744073709551615,-9223372036854775808]}'
    (message,) = parse_publish(load_publish_body(body), CHANNELS)
    assert orjson.dumps(message.data) == b"[18446744073709551615,-9223372036854775808]"


@pytest.mark.parametrize(
    "number",
    [
        "18446744073709551616",  # 2^64
        "-9223372036854775809",  # -2^63 - 1
        "123456789012345678901234567890",
        "1" + "0" * 300,
    ],
)
def test_integers_beyond_64_bits_are_refused_naming_the_message(number: str) -> None:
    body = (
        '{"messages": [{"channel": "ticker", "topic": "T", "data": 1}, '
        f'{{"channel": "ticker", "topic": "T", "data": {{"qty": [{number}]}}}}]}}'
    ).encode()
    with pytest.raises(PublishError) as info:
        parse_publish(load_publish_body(body), CHANNELS)
    assert (info.value.field, info.value.message) == ("messages[1].data", INTEGER_RULE)


@pytest.mark.parametrize(
    "text",
    [
        "1e20",  # a float in the JSON text: a float it stays
        "1234567890123456789.5",
        "0.12345678901234567890123",
        '"12345678901234567890123"',  # digits in a string
    ],
)
def test_long_digit_runs_that_are_not_wide_integers_pass(text: str) -> None:
    body = f'{{"channel": "ticker", "topic": "T", "data": [{text}]}}'.encode()
    (message,) = parse_publish(load_publish_body(body), CHANNELS)
    assert orjson.loads(orjson.dumps(message.data)) == [orjson.loads(text)]


def test_wide_integer_outside_data_is_refused_where_it_stands() -> None:
    body = b'{"channel": "ticker", "topic": 123456789012345678901, "data": 1}'
    with pytest.raises(PublishError) as info:
        parse_publish(load_publish_body(body), CHANNELS)
    assert info.value.field == "topic"


@pytest.mark.parametrize("number", ["1" + "0" * 309, "-1" + "0" * 5000, "1e400"])
def test_numbers_past_any_float_are_refused_with_their_position(number: str) -> None:
    body = b'{"data": [' + number.encode() + b"]}"
    with pytest.raises(PublishError) as info:
        load_publish_body(body)
    assert (info.value.field, info.value.message) == (
        "body",
        f"the number at character 10 is too large; {INTEGER_RULE}",
    )


def test_load_publish_body_refuses_what_is_not_json() -> None:
    with pytest.raises(PublishError) as info:
        load_publish_body(b'{"channel": ')
    assert (info.value.field, info.value.message, info.value.status) == (
        "body",
        "not valid JSON",
        400,
    )


def test_wide_integers_are_markers_only_in_the_exact_parse() -> None:
    document = load_publish_body(b"[100000000000000000000, 1]")
    assert isinstance(document, list)
    assert isinstance(document[0], WideInteger) and document[0].text == "100000000000000000000"
    assert document[1] == 1


# -- Content-Encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [""], ["identity"], ["Identity "], ["identity, identity"]])
def test_uncompressed_bodies_pass(values: list[str]) -> None:
    check_content_encoding(values)


@pytest.mark.parametrize(
    "values", [["gzip"], ["deflate"], ["br"], ["zstd"], ["identity, gzip"], ["", "x-gzip"]]
)
def test_compressed_bodies_are_refused(values: list[str]) -> None:
    with pytest.raises(UnsupportedEncoding) as info:
        check_content_encoding(values)
    exc = info.value
    assert (exc.status, exc.code, exc.field) == (415, "unsupported_encoding", "Content-Encoding")
    assert exc.message == "compressed bodies are not accepted; send the JSON uncompressed"


# -- fuzz: any body gets a documented answer ----------------------------------------------------

WIDE = st.one_of(
    st.integers(min_value=2**64, max_value=10**40), st.integers(max_value=-(2**63) - 1)
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def message_bodies() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {
            "channel": st.sampled_from([*CHANNELS, "nope"]),
            "topic": st.sampled_from(["BTC-USD", "*", "", "a b"]),
            "data": JSON_VALUES | WIDE | st.lists(WIDE, max_size=2),
        }
    )
    return message | st.fixed_dictionaries({"messages": st.lists(message, max_size=4)})


@settings(max_examples=300, deadline=None)
@given(message_bodies())
def test_any_publish_document_is_accepted_whole_or_refused_naming_a_field(body: Any) -> None:
    raw = json.dumps(body).encode()
    try:
        messages = parse_publish(load_publish_body(raw), CHANNELS)
    except PublishError as exc:
        assert exc.status == 400 and exc.field and exc.message
        return
    for message in messages:  # what is accepted is carried exactly
        assert isinstance(message.data, orjson.Fragment)
    items = body.get("messages", [body])
    assert [json.loads(orjson.dumps(m.data)) for m in messages] == [i["data"] for i in items]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_get_a_publish_error_or_messages(raw: bytes) -> None:
    try:
        parse_publish(load_publish_body(raw), CHANNELS)
    except PublishError as exc:
        assert exc.status == 400 and exc.field


def test_pong_frame_echoes_the_ping_payload_in_a_control_frame() -> None:
    assert pong_frame(b"") == b"\x8a\x00"
    assert pong_frame(b"p" * 125) == b"\x8a\x7d" + b"p" * 125


# -- heartbeats (issue 9) ---------------------------------------------------------------------

HEARTBEAT_RULE = (
    '"heartbeat" must be a whole number of seconds from 1 to 3600, or 0 to stop heartbeats'
)


@pytest.mark.parametrize("seconds", [0, 1, 5, 3600])
def test_subscribe_takes_a_heartbeat_interval(seconds: int) -> None:
    request = parse_request(
        json.dumps({"type": "subscribe", "topics": ["BTC-USD"], "heartbeat": seconds}),
        MAX_TOPICS,
    )
    assert request == Subscribe(("BTC-USD",), None, None, seconds)


def test_subscribe_without_heartbeat_leaves_it_unset() -> None:
    request = parse_request('{"type": "subscribe", "topics": ["BTC-USD"]}', MAX_TOPICS)
    assert isinstance(request, Subscribe)
    assert request.heartbeat is None


@pytest.mark.parametrize(
    "value", ["-1", "3601", "1.5", "0.1", "true", "false", '"5"', "[5]", "{}", "1e2"]
)
def test_bad_heartbeats_are_bad_messages_with_the_rule(value: str) -> None:
    text = f'{{"type": "subscribe", "topics": ["BTC-USD"], "heartbeat": {value}, "id": 9}}'
    with pytest.raises(BadMessage) as info:
        parse_request(text, MAX_TOPICS)
    assert info.value.code == "bad_message"
    assert info.value.message == HEARTBEAT_RULE
    assert info.value.request_id == 9
    assert json.loads(error(info.value.code, info.value.message, 9)) == {
        "type": "error",
        "code": "bad_message",
        "message": HEARTBEAT_RULE,
        "id": 9,
    }


def test_heartbeat_on_an_unsubscribe_is_ignored_like_any_unknown_field() -> None:
    request = parse_request(
        '{"type": "unsubscribe", "topics": ["BTC-USD"], "heartbeat": "x"}', MAX_TOPICS
    )
    assert request == Unsubscribe(("BTC-USD",))


def test_heartbeat_frame() -> None:
    topics = {"BTC-USD": {"seq": 57, "epoch": "e1"}}
    assert heartbeat(3, 1732900000.5, topics) == (
        b'{"type":"heartbeat","n":3,"ts":1732900000.5,"topics":{"BTC-USD":{"seq":57,"epoch":"e1"}}}'
    )
