"""What the Redis broker writes and reads: key names, the publish script's arguments and the
pub/sub framing of a batch of updates (pure: no I/O, tested without Redis).

Keys of one topic share the hash tag ``{<channel>:<topic>}`` so that they live in one slot
of a Redis Cluster:

- ``wsg:{<channel>:<topic>}:meta``: hash, ``e`` = epoch, ``s`` = the latest seq;
- ``wsg:{<channel>:<topic>}:history``: stream, entry id ``<seq>-0``, fields ``d`` (data,
  encoded JSON) and ``t`` (the publishing gateway's clock).

Pub/sub: one Redis channel per gateway channel, ``wsg:updates:<channel>``; each pub/sub
message carries every update of that channel from one publish script call::

    W1 <ts> <seq> <epoch> <topic length> <data length> [<seq> <epoch> ...]\\n
    <topic bytes><data bytes><topic bytes><data bytes>...

The header is one line of space-separated fields (epochs are URL-safe base64, numbers are
decimal), so one ``split`` parses it; topics and data are length-prefixed, so they may hold
any byte. The data bytes are handed on as an :class:`orjson.Fragment`: the channel embeds
them in its frames without decoding and encoding them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .base import HistoryPolicy, Message, Update

PREFIX = "wsg"
FRAME_VERSION = b"W1"
#: the index set of node ids; each record is ``<NODES_KEY>:<node id>`` (same hash tag)
NODES_KEY = f"{PREFIX}:{{nodes}}"


def meta_key(channel: str, topic: str) -> str:
    return f"{PREFIX}:{{{channel}:{topic}}}:meta"


def history_key(channel: str, topic: str) -> str:
    return f"{PREFIX}:{{{channel}:{topic}}}:history"


def updates_channel(channel: str) -> str:
    """The pub/sub channel that carries the updates of gateway channel ``channel``."""
    return f"{PREFIX}:updates:{channel}"


def probe_channel(node: str) -> str:
    """The pub/sub channel of one process's probe (it alone subscribes to it)."""
    return f"{PREFIX}:probe:{node}"


def data_bytes(data: Any) -> bytes:
    """A message's data as encoded JSON. Published data is an :class:`orjson.Fragment`
    already (protocol.encode_data), whose bytes orjson passes through as they are."""
    return orjson.dumps(data)


def publish_arguments(
    messages: Sequence[Message],
    policies: Mapping[str, HistoryPolicy],
    default: HistoryPolicy,
    ts: float,
    epoch_candidate: str,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of scripts/publish.lua for ``messages`` (its header says the layout)."""
    channels: dict[str, int] = {}
    channel_args: list[Any] = []
    topics: dict[tuple[str, str], int] = {}
    topic_args: list[Any] = []
    keys: list[str] = []
    layout: list[str] = []
    blob: list[bytes] = []
    for message in messages:
        channel, topic = message.channel, message.topic
        index = topics.get((channel, topic))
        if index is None:
            channel_index = channels.get(channel)
            if channel_index is None:
                channel_index = channels[channel] = len(channels) + 1
                policy = policies.get(channel, default)
                channel_args += (
                    updates_channel(channel),
                    policy.size,
                    milliseconds(policy.ttl),
                    milliseconds(policy.topic_ttl),
                )
            index = topics[channel, topic] = len(topics) + 1
            topic_args += (channel_index, topic)
            keys += (meta_key(channel, topic), history_key(channel, topic))
        data = data_bytes(message.data)
        layout.append(f"{index} {len(data)}")
        blob.append(data)
    return keys, [
        repr(ts),
        epoch_candidate,
        len(channels),
        *channel_args,
        *topic_args,
        " ".join(layout),
        b"".join(blob),
    ]


def milliseconds(seconds: float) -> int:
    """A TTL for PEXPIRE: at least 1 ms (0 would delete the key at once)."""
    return max(1, round(seconds * 1000))


def decode_updates(channel: str, payload: bytes) -> list[Update]:
    """The updates of one pub/sub message on ``updates_channel(channel)``.

    Raises ValueError when the payload is not a well-formed frame.
    """
    end = payload.index(b"\n")
    fields = payload[:end].split(b" ")
    if fields[0] != FRAME_VERSION or len(fields) % 4 != 2:
        raise ValueError("not a wsgateway update frame")
    ts = float(fields[1])
    position = end + 1
    updates = []
    epoch_bytes = b""
    epoch = ""
    fragment = orjson.Fragment
    for i in range(2, len(fields), 4):
        if fields[i + 1] != epoch_bytes:  # mostly one epoch per frame: decoded once
            epoch_bytes = fields[i + 1]
            epoch = epoch_bytes.decode()
        topic_end = position + int(fields[i + 2])
        data_end = topic_end + int(fields[i + 3])
        if data_end > len(payload):
            raise ValueError("update frame shorter than its header says")
        updates.append(
            Update(
                channel,
                payload[position:topic_end].decode(),
                int(fields[i]),
                ts,
                fragment(payload[topic_end:data_end]),
                epoch,
            )
        )
        position = data_end
    if position != len(payload):
        raise ValueError("update frame longer than its header says")
    return updates


def decode_entry(channel: str, topic: str, epoch: str, entry: Sequence[Any]) -> Update:
    """One history stream entry (``[id, [field, value, ...]]`` as XRANGE answers it)."""
    entry_id, pairs = entry
    fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
    seq = int(entry_id.split(b"-", 1)[0])
    return Update(channel, topic, seq, float(fields[b"t"]), orjson.Fragment(fields[b"d"]), epoch)
