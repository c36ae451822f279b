"""The WebSocket protocol, without I/O: parse client frames, build server frames.

Client frames are JSON objects ``{"type": "subscribe" | "unsubscribe" | "ping", ...}``; a
bad one raises a :class:`~wsgateway.errors.ClientError` whose code goes back to the client.
Server frames are built as bytes, and :func:`text_frame` wraps a payload in a WebSocket
frame once so that fan-out copies the same bytes to every subscriber.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .book import InvalidDelta, parse_delta
from .brokers.base import Message, Position
from .errors import (
    BadJson,
    BadMessage,
    InvalidTopic,
    PublishError,
    TooManyTopics,
    UnknownType,
    UnsupportedEncoding,
)

WILDCARD = "*"
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
TOPIC_RULE = 'topic must be 1-64 characters of A-Z a-z 0-9 . _ - : / (or "*" for all topics)'
MAX_ID_LENGTH = 64

RequestId = int | str | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[str, ...]
    id: RequestId = None
    #: positions to resume from, by topic (``"since"``): None when not asked
    since: dict[str, Position] | None = None
    #: seconds between heartbeat frames for the connection (``"heartbeat"``): 0 stops
    #: them, None leaves them as they are
    heartbeat: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topics: tuple[str, ...]
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId = None


Request = Subscribe | Unsubscribe | Ping


def is_valid_topic(topic: object, *, allow_wildcard: bool = True) -> bool:
    """True for a topic a client may name (``"*"`` only where ``allow_wildcard``)."""
    if not isinstance(topic, str):
        return False
    if topic == WILDCARD:
        return allow_wildcard
    return TOPIC_PATTERN.fullmatch(topic) is not None


def parse_request(text: str | bytes, max_topics: int) -> Request:
    """Parse one client frame; raise a ClientError describing what is wrong with it."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadJson("frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadMessage(f"expected a JSON object, got {_json_kind(message)}")

    request_id = _request_id(message)
    kind = message.get("type")
    if kind is None:
        raise BadMessage('"type" is required', request_id)
    if kind == "ping":
        return Ping(request_id)
    if kind in ("subscribe", "unsubscribe"):
        topics = _topics(message, max_topics, request_id)
        if kind == "unsubscribe":
            return Unsubscribe(topics, request_id)
        since = _since(message.get("since"), topics, request_id)
        heartbeat = _heartbeat(message.get("heartbeat"), request_id)
        return Subscribe(topics, request_id, since, heartbeat)
    if not isinstance(kind, str):
        raise UnknownType(f'"type" must be a string, got {_json_kind(kind)}', request_id)
    shown = kind if len(kind) <= 32 else kind[:32] + "..."
    raise UnknownType(
        f"unknown type {shown!r}; expected subscribe, unsubscribe or ping", request_id
    )


def _request_id(message: dict[str, Any]) -> RequestId:
    request_id = message.get("id")
    if request_id is None:
        return None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise BadMessage('"id" must be an integer or a string of at most 64 characters')
    if isinstance(request_id, str) and len(request_id) > MAX_ID_LENGTH:
        raise BadMessage('"id" must be an integer or a string of at most 64 characters')
    if isinstance(request_id, int) and not -(2**53) < request_id < 2**53:
        # Beyond this a JavaScript client cannot read its own id back.
        raise BadMessage('"id" integers must be within +-2^53')
    return request_id


def _topics(message: dict[str, Any], max_topics: int, request_id: RequestId) -> tuple[str, ...]:
    topics = message.get("topics")
    if not isinstance(topics, list) or not topics:
        raise BadMessage('"topics" must be a non-empty list of strings', request_id)
    for topic in topics:
        if not is_valid_topic(topic):
            raise InvalidTopic(TOPIC_RULE, request_id)
    unique = tuple(dict.fromkeys(topics))  # drop repeats, keep order
    if len(unique) > max_topics:
        raise TooManyTopics(f"at most {max_topics} topics per connection", request_id)
    return unique


#: The largest seq a client may name: what a JavaScript number holds exactly.
MAX_SEQ = 2**53 - 1
MAX_EPOCH_LENGTH = 64
SINCE_RULE = (
    '"since" must map topics of this request (not "*") to {"seq": integer >= 0, '
    '"epoch": string}, as the subscribed reply and update frames give them'
)


def _since(
    value: object, topics: tuple[str, ...], request_id: RequestId
) -> dict[str, Position] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadMessage(SINCE_RULE, request_id)
    since = {}
    for topic, position in value.items():
        if topic == WILDCARD or topic not in topics or not isinstance(position, dict):
            raise BadMessage(SINCE_RULE, request_id)
        seq, epoch = position.get("seq"), position.get("epoch")
        if (
            isinstance(seq, bool)
            or not isinstance(seq, int)
            or not 0 <= seq <= MAX_SEQ
            or not isinstance(epoch, str)
            or len(epoch) > MAX_EPOCH_LENGTH
        ):
            raise BadMessage(SINCE_RULE, request_id)
        since[topic] = Position(epoch, seq)
    return since


#: The longest heartbeat interval a client may ask for, in seconds (an hour).
MAX_HEARTBEAT = 3600
HEARTBEAT_RULE = (
    f'"heartbeat" must be a whole number of seconds from 1 to {MAX_HEARTBEAT}, or 0 to stop '
    "heartbeats"
)


def _heartbeat(value: object, request_id: RequestId) -> int | None:
    # Whole seconds: a client that needs to notice a dead feed within less than a second
    # is better served by the updates themselves; and 1 s bounds the timers a client can
    # make the gateway run.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_HEARTBEAT:
        raise BadMessage(HEARTBEAT_RULE, request_id)
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "an object"


# -- server frames ----------------------------------------------------------------------------


def _with_id(body: dict[str, Any], request_id: RequestId) -> bytes:
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def subscribed(
    topics: tuple[str, ...],
    request_id: RequestId,
    positions: dict[str, dict[str, Any]] | None = None,
) -> bytes:
    body: dict[str, Any] = {"type": "subscribed", "topics": list(topics)}
    if positions is not None:
        body["positions"] = positions
    return _with_id(body, request_id)


def reset(channel: str, topic: str, epoch: str, seq: int) -> bytes:
    """The topic's continuity broke: it now stands at ``(epoch, seq)``; what came before
    cannot be resumed from."""
    return orjson.dumps(
        {"type": "reset", "channel": channel, "topic": topic, "epoch": epoch, "seq": seq}
    )


def heartbeat(n: int, ts: float, topics: dict[str, dict[str, Any]]) -> bytes:
    """A heartbeat: the ``n``-th on its connection, with the position of each topic it
    receives (see Channel.heartbeat_positions)."""
    return orjson.dumps({"type": "heartbeat", "n": n, "ts": ts, "topics": topics})


def unsubscribed(topics: tuple[str, ...], request_id: RequestId) -> bytes:
    return _with_id({"type": "unsubscribed", "topics": list(topics)}, request_id)


def pong(request_id: RequestId, now: float) -> bytes:
    return _with_id({"type": "pong", "ts": now}, request_id)


def error(code: str, message: str, request_id: RequestId = None, **extra: Any) -> bytes:
    return _with_id({"type": "error", "code": code, "message": message, **extra}, request_id)


def update(
    channel: str,
    topic: str,
    seq: int,
    ts: float,
    data: Any,
    epoch: str | None = None,
    from_seq: int | None = None,
) -> bytes:
    """An update frame; ``epoch`` is given on the first update of an epoch (seq 1), and
    ``from_seq`` on a conflated one: it replaces the updates ``from_seq``..``seq``."""
    body = {"type": "update", "channel": channel, "topic": topic, "seq": seq}
    if from_seq is not None:
        body["from_seq"] = from_seq
    body["ts"] = ts
    if epoch is not None:
        body["epoch"] = epoch
    body["data"] = data
    return orjson.dumps(body)


def snapshot(channel: str, topic: str, seq: int, epoch: str, ts: float, data: Any) -> bytes:
    """A topic's state at ``(epoch, seq)``: its latest value, or its whole book."""
    return orjson.dumps(
        {
            "type": "snapshot",
            "channel": channel,
            "topic": topic,
            "seq": seq,
            "epoch": epoch,
            "ts": ts,
            "data": data,
        }
    )


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, unfragmented server-to-client text frame (RFC 6455, 5.2)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


def pong_frame(payload: bytes) -> bytes:
    """The pong answering a client's ping (RFC 6455, 5.5.3): a control frame, whose payload
    the frame reader has already held to 125 bytes."""
    return struct.pack("!BB", 0x8A, len(payload)) + payload


# -- the publish API body ---------------------------------------------------------------------

#: Messages one POST /api/publish may carry (the body is also capped in bytes by the server).
MAX_PUBLISH_BATCH = 10_000
#: Deepest nesting of arrays and objects in a message's ``data``: orjson encodes no deeper.
MAX_DATA_DEPTH = 254
#: Integers orjson keeps exact; outside this range it would turn them into floats.
INT_RANGE = (-(2**63), 2**64 - 1)
INTEGER_RULE = (
    "integers must be within -2^63 .. 2^64-1 (larger ones would lose digits; send them as strings)"
)
# A run of 19 digits is the shortest text of an integer beyond INT_RANGE. Only a body with
# one (rare: long ids, many decimals) pays for the exact re-parse in _parse_exact. Found by
# mapping digits to "0" and the rest to " ", then a substring search: 2.5 ms per MB, where
# re.search(rb"\d{19}") took 25 ms (three times orjson's parse of the same body).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19
_IDENTITY = frozenset({"", "identity"})


def check_content_encoding(values: Iterable[str]) -> None:
    """Refuse a compressed body (``Content-Encoding`` other than ``identity``) unread.

    Inflating costs CPU the sender does not pay for (0.5 MB of deflate inflates to 0.5 GB),
    and publishers are few and close by, so the gateway does not offer it at all.
    """
    for value in values:
        for coding in value.split(","):
            if coding.strip().lower() not in _IDENTITY:
                raise UnsupportedEncoding(
                    "Content-Encoding",
                    "compressed bodies are not accepted; send the JSON uncompressed",
                )


def load_publish_body(body: bytes) -> object:
    """Parse a publish body; raise :class:`PublishError` (field ``body``) if it is not JSON.

    Integers beyond :data:`INT_RANGE` come back as markers that :func:`parse_publish`
    refuses, naming the message, instead of as floats that silently lost digits.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("number is infinity"):
            # Valid JSON, but past any float: say so rather than "not valid JSON".
            raise PublishError(
                "body", f"the number at character {exc.pos} is too large; {INTEGER_RULE}"
            ) from None
        raise PublishError("body", "not valid JSON") from None
    if _LONG_DIGIT_RUN in body.translate(_DIGITS_ONLY):
        return _parse_exact(body)
    return document


class WideInteger:
    """An integer from a publish body that orjson cannot carry exactly (see INT_RANGE)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _exact_int(text: str) -> int | WideInteger:
    # Nothing longer than "-9223372036854775808" fits; and int() of a long digit string
    # costs quadratic time (and fails past 4,300 digits).
    if len(text) > 20:
        return WideInteger(text)
    value = int(text)
    return value if INT_RANGE[0] <= value <= INT_RANGE[1] else WideInteger(text)


def _parse_exact(body: bytes) -> object:
    # orjson has accepted the body already, so this parse (slower, but it sees each
    # integer's text) meets only valid JSON; what differs is Python's recursion limit.
    try:
        return json.loads(body, parse_int=_exact_int)
    except RecursionError:
        raise PublishError("body", "nested too deeply") from None


def parse_publish(
    document: object, channels: Collection[str], books: Collection[str] = ()
) -> list[Message]:
    """Validate a ``POST /api/publish`` body: one message or ``{"messages": [...]}``.

    Raises :class:`PublishError` whose ``field`` names the offending part, e.g.
    ``messages[3].topic``. Each message's ``data`` is encoded here, once: data that cannot
    be encoded is refused now rather than dropped at broadcast after taking a ``seq``, and
    the broadcast embeds the bytes (an :class:`orjson.Fragment`) instead of encoding again.
    On the channels in ``books`` (mode ``book``), ``data`` must be a book message: it becomes
    a :class:`~wsgateway.book.Delta` (a bad one is refused with the field at fault), which
    the broker applies to the topic's book.
    """
    if not isinstance(document, dict):
        raise PublishError("body", f"expected a JSON object, got {_json_kind(document)}")
    if "messages" not in document:
        return [_publish_message(document, "", channels, books)]
    items = document["messages"]
    if not isinstance(items, list) or not items:
        raise PublishError("messages", "expected a non-empty list of messages")
    if len(items) > MAX_PUBLISH_BATCH:
        raise PublishError("messages", f"at most {MAX_PUBLISH_BATCH} messages per request")
    return [
        _publish_message(item, f"messages[{i}].", channels, books) for i, item in enumerate(items)
    ]


def _publish_message(
    item: object, where: str, channels: Collection[str], books: Collection[str]
) -> Message:
    if not isinstance(item, dict):
        raise PublishError(
            where.rstrip(".") or "body", f"expected a JSON object, got {_json_kind(item)}"
        )
    if "channel" not in item:
        raise PublishError(f"{where}channel", "required")
    channel = item.get("channel")
    if not isinstance(channel, str) or channel not in channels:
        raise PublishError(f"{where}channel", "unknown channel; configured: " + ", ".join(channels))
    if "topic" not in item:
        raise PublishError(f"{where}topic", "required")
    topic = item.get("topic")
    if not is_valid_topic(topic, allow_wildcard=False):
        raise PublishError(
            f"{where}topic", "topic must be 1-64 characters of A-Z a-z 0-9 . _ - : /"
        )
    if "data" not in item:
        raise PublishError(f"{where}data", "required")
    if channel in books:
        try:
            return Message(channel, str(topic), parse_delta(item["data"], f"{where}data"))
        except InvalidDelta as exc:
            raise PublishError(exc.field, exc.reason) from None
    return Message(channel, str(topic), encode_data(item["data"], f"{where}data"))


def encode_data(data: Any, field: str = "data") -> orjson.Fragment:
    """``data`` as encoded JSON, ready to embed in every update frame; raise
    :class:`PublishError` naming ``field`` when it cannot be encoded."""
    try:
        return orjson.Fragment(orjson.dumps(data))
    except orjson.JSONEncodeError as exc:
        raise PublishError(field, _unencodable(str(exc))) from None


def _unencodable(reason: str) -> str:
    # orjson says why only in its message; an unknown one is passed on, shortened.
    if reason == "Recursion limit reached":
        return f"nested deeper than {MAX_DATA_DEPTH} levels of arrays and objects"
    if reason.startswith("Integer exceeds 64-bit range") or reason.endswith(
        f": {WideInteger.__name__}"
    ):
        return INTEGER_RULE
    return f"cannot be encoded as JSON ({reason[:100]})"
