"""The WebSocket protocol, without I/O: parse client frames, build server frames.

Client frames are JSON objects ``{"type": "subscribe" | "unsubscribe" | "ping", ...}``; a
bad one raises a :class:`~wsgateway.errors.ClientError` whose code goes back to the client.
Server frames are built as bytes, and :func:`text_frame` wraps a payload in a WebSocket
frame once so that fan-out copies the same bytes to every subscriber.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from .brokers.base import Message
from .errors import BadJson, BadMessage, InvalidTopic, PublishError, TooManyTopics, UnknownType

WILDCARD = "*"
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
TOPIC_RULE = 'topic must be 1-64 characters of A-Z a-z 0-9 . _ - : / (or "*" for all topics)'
MAX_ID_LENGTH = 64

RequestId = int | str | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[str, ...]
    id: RequestId = None


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
        return (
            Subscribe(topics, request_id)
            if kind == "subscribe"
            else Unsubscribe(topics, request_id)
        )
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


def subscribed(topics: tuple[str, ...], request_id: RequestId) -> bytes:
    return _with_id({"type": "subscribed", "topics": list(topics)}, request_id)


def unsubscribed(topics: tuple[str, ...], request_id: RequestId) -> bytes:
    return _with_id({"type": "unsubscribed", "topics": list(topics)}, request_id)


def pong(request_id: RequestId, now: float) -> bytes:
    return _with_id({"type": "pong", "ts": now}, request_id)


def error(code: str, message: str, request_id: RequestId = None, **extra: Any) -> bytes:
    return _with_id({"type": "error", "code": code, "message": message, **extra}, request_id)


def update(channel: str, topic: str, seq: int, ts: float, data: Any) -> bytes:
    return orjson.dumps(
        {"type": "update", "channel": channel, "topic": topic, "seq": seq, "ts": ts, "data": data}
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


def parse_publish(document: object, channels: Collection[str]) -> list[Message]:
    """Validate a ``POST /api/publish`` body: one message or ``{"messages": [...]}``.

    Raises :class:`PublishError` whose ``field`` names the offending part, e.g.
    ``messages[3].topic``.
    """
    if not isinstance(document, dict):
        raise PublishError("body", f"expected a JSON object, got {_json_kind(document)}")
    if "messages" not in document:
        return [_publish_message(document, "", channels)]
    items = document["messages"]
    if not isinstance(items, list) or not items:
        raise PublishError("messages", "expected a non-empty list of messages")
    if len(items) > MAX_PUBLISH_BATCH:
        raise PublishError("messages", f"at most {MAX_PUBLISH_BATCH} messages per request")
    return [_publish_message(item, f"messages[{i}].", channels) for i, item in enumerate(items)]


def _publish_message(item: object, where: str, channels: Collection[str]) -> Message:
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
    return Message(channel, str(topic), item["data"])
