"""Property-based fuzzing of what clients and publishers send: any input gets a documented
reply or a valid request, never another exception.

``parse_request`` reads every client frame and ``parse_publish`` every publish body; an
exception other than the documented ones would escape to the connection handler (closing the
connection 1011, counted as an internal error) or to aiohttp (a 500 with a traceback). The
properties below check, for arbitrary bytes and text, arbitrary JSON values and frames that
are nearly valid, that each call either returns a request that satisfies the protocol rules
or raises a ClientError / PublishError from the documented set, and that the reply built from
either can be encoded.

Hypothesis runs with the "wsgateway" profile of conftest.py (derandomized, no example
database, ~300 examples per property); ``--hypothesis-profile=explore`` searches longer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from wsgateway.brokers.base import Message
from wsgateway.errors import ClientError, PublishError
from wsgateway.protocol import (
    MAX_ID_LENGTH,
    TOPIC_PATTERN,
    WILDCARD,
    Ping,
    Subscribe,
    Unsubscribe,
    error,
    parse_publish,
    parse_request,
    pong,
    subscribed,
    unsubscribed,
)

MAX_TOPICS = 5
CHANNELS = ("market", "ticker", "orderbook", "trades", "user")
#: The codes README.md documents for a bad frame that the parser itself can answer
#: (forbidden_topic and rate_limited come from the channel and the connection).
PARSER_CODES = {"bad_json", "bad_message", "unknown_type", "invalid_topic", "too_many_topics"}
#: The fields a 400 from POST /api/publish may name (README.md, "Endpoints").
PUBLISH_FIELD = re.compile(r"body|messages|(?:messages\[(\d+)\]\.?)?(channel|topic|data)?")

# -- strategies ----------------------------------------------------------------------------------

#: Numbers as a JSON parser hands them over: 64-bit integers and beyond, every finite float.
numbers = st.one_of(
    st.integers(),
    st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
)
#: Text including control characters, lone surrogates and every plane.
any_text = st.text(st.characters(exclude_categories=()), max_size=80)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(any_text, inner, max_size=6)
    ),
    max_leaves=30,
)
valid_topics = st.from_regex(TOPIC_PATTERN, fullmatch=True)
topics = st.one_of(
    valid_topics,
    st.just(WILDCARD),
    st.sampled_from(["", "x" * 65, "BTC USD", "BTC*", "**", "é", "BTC-USD\n", "a\x00b"]),
    json_values,
)
request_ids = st.one_of(
    st.none(),
    st.integers(min_value=-(2**53) - 2, max_value=2**53 + 2),
    st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 2**64, True, False, 1.0, 0.5]),
    st.text(max_size=MAX_ID_LENGTH + 2),
    json_values,
)
kinds = st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping"]), json_values)


@st.composite
def near_valid_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A client frame with each field valid, invalid or missing: mostly almost right."""
    frame: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        frame["type"] = draw(kinds)
    if draw(st.integers(0, 9)):
        frame["topics"] = draw(st.one_of(st.lists(topics, max_size=MAX_TOPICS + 2), json_values))
    if draw(st.booleans()):
        frame["id"] = draw(request_ids)
    frame.update(draw(st.dictionaries(any_text, json_values, max_size=2)))
    return frame


def publish_items(channel: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    @st.composite
    def item(draw: st.DrawFn) -> Any:
        if not draw(st.integers(0, 9)):
            return draw(json_values)  # not even an object
        message: dict[str, Any] = {}
        if draw(st.integers(0, 9)):
            message["channel"] = draw(channel)
        if draw(st.integers(0, 9)):
            message["topic"] = draw(st.one_of(valid_topics, topics))
        if draw(st.integers(0, 9)):
            message["data"] = draw(json_values)
        return message

    return item()


channels = st.one_of(st.sampled_from(CHANNELS), json_values)
publish_bodies = st.one_of(
    publish_items(channels),
    st.fixed_dictionaries({"messages": st.lists(publish_items(channels), max_size=5)}),
    st.fixed_dictionaries({"messages": json_values}),
    json_values,
)


# -- the properties ------------------------------------------------------------------------------


def valid_id(request_id: object) -> bool:
    if request_id is None:
        return True
    if isinstance(request_id, bool):
        return False
    if isinstance(request_id, int):
        return -(2**53) < request_id < 2**53
    return isinstance(request_id, str) and len(request_id) <= MAX_ID_LENGTH


def check_request(text: str | bytes) -> None:
    """parse_request(text) is a valid request or a documented ClientError; either encodes."""
    try:
        request = parse_request(text, MAX_TOPICS)
    except ClientError as exc:
        assert type(exc).code in PARSER_CODES, exc
        assert exc.code in PARSER_CODES
        assert isinstance(exc.message, str) and exc.message
        assert valid_id(exc.request_id), exc.request_id
        reply = orjson.loads(error(exc.code, exc.message, exc.request_id))
        assert reply["code"] == exc.code
        return
    assert isinstance(request, Subscribe | Unsubscribe | Ping), request
    assert valid_id(request.id), request.id
    if isinstance(request, Ping):
        orjson.loads(pong(request.id, 1.5))
        return
    assert isinstance(request.topics, tuple)
    assert 1 <= len(request.topics) <= MAX_TOPICS
    assert len(set(request.topics)) == len(request.topics)
    for topic in request.topics:
        assert topic == WILDCARD or TOPIC_PATTERN.fullmatch(topic), topic
    reply = subscribed if isinstance(request, Subscribe) else unsubscribed
    assert orjson.loads(reply(request.topics, request.id))["topics"] == list(request.topics)


@given(st.binary(max_size=300))
@example(b"\xff\xfe")
@example(b'{"type": "ping", "id": "\xed\xa0\x80"}')  # a surrogate, UTF-8 encoded
@example(b"[" * 2000)
def test_any_bytes_get_a_documented_reply(data: bytes) -> None:
    check_request(data)


@given(any_text)
@example('{"type": "ping", "id": "\\ud800"}')  # an escaped lone surrogate
@example('{"type": "subscribe", "topics": ["\\u0000"]}')
@example('{"type": "ping", "id": 1e400}')
def test_any_text_gets_a_documented_reply(text: str) -> None:
    check_request(text)


@given(json_values)
def test_any_json_value_gets_a_documented_reply(value: Any) -> None:
    check_request(json.dumps(value))


@given(near_valid_frames())
@example({"type": "subscribe", "topics": ["BTC-USD"] * 20, "id": 2**53 - 1})
@example({"type": "subscribe", "topics": [f"T{i}" for i in range(MAX_TOPICS + 1)], "id": "x"})
@example({"type": "unsubscribe", "topics": [], "id": -(2**53)})
@example({"type": ["ping"], "id": "x" * (MAX_ID_LENGTH + 1)})
def test_near_valid_frames_get_a_documented_reply(frame: dict[str, Any]) -> None:
    check_request(json.dumps(frame))


def check_publish(document: object) -> None:
    """parse_publish is a list of valid messages or a PublishError naming a documented field."""
    try:
        messages = parse_publish(document, CHANNELS)
    except PublishError as exc:
        assert type(exc) is PublishError, exc  # a 400, not an auth or broker answer
        assert (exc.status, exc.code) == (400, "bad_request")
        assert isinstance(exc.message, str) and exc.message
        match = PUBLISH_FIELD.fullmatch(exc.field)
        assert match and exc.field, exc.field
        if match[1] is not None:  # messages[i]...: the first bad one, within the batch
            assert isinstance(document, dict)
            batch = document["messages"]
            index = int(match[1])
            assert index < len(batch)
            for item in batch[:index]:  # every message before it is valid on its own
                parse_publish(item, CHANNELS)
        return
    assert isinstance(messages, list) and messages
    for message in messages:
        assert isinstance(message, Message)
        assert message.channel in CHANNELS
        assert isinstance(message.topic, str) and TOPIC_PATTERN.fullmatch(message.topic)


@given(publish_bodies)
@example({"messages": []})
@example({"messages": [{"channel": "ticker", "topic": "BTC-USD", "data": 1}, 7]})
@example({"channel": "ticker", "topic": WILDCARD, "data": None})
@example({"channel": ["ticker"], "topic": "BTC-USD", "data": None})
def test_any_publish_body_gets_a_documented_reply(document: Any) -> None:
    check_publish(document)


@given(st.one_of(st.binary(max_size=300), json_values.map(json.dumps)))
def test_any_publish_bytes_as_the_server_parses_them(body: bytes | str) -> None:
    # The publish handler parses the body with orjson and answers JSONDecodeError with a 400
    # naming "body"; everything that parses goes to parse_publish.
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    check_publish(document)
