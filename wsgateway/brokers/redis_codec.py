"""What the Redis broker writes and reads: key names, the publish script's arguments and the
pub/sub framing of a batch of updates (pure: no I/O, tested without Redis).

Keys of one topic share the hash tag ``{<channel>:<topic>}`` so that they live in one slot
of a Redis Cluster:

- ``wsg:{<channel>:<topic>}:meta``: hash, ``e`` = epoch, ``s`` = the latest seq; on
  ``last`` and ``book`` channels also ``t`` = the ts of the update at ``s`` (the
  snapshot's), and on ``last`` channels ``v`` = that update's data;
- ``wsg:{<channel>:<topic>}:history``: stream, entry id ``<seq>-0``, fields ``d`` (data,
  encoded JSON) and ``t`` (the publishing gateway's clock);
- on ``book`` channels the book: ``...:bids`` and ``...:asks``, sorted sets whose members
  are the canonical price texts, each scored by its own text (Redis reads it as a double:
  the order of book.price_key, equal scores by text); ``...:levels``, hash of qty by
  ``b<price>`` and ``a<price>``.

All of a topic's keys expire with its numbering (``topic_ttl``; the history with
``history_ttl``), and publish.lua deletes the history and the book when it starts a new
epoch.

A book message goes to publish.lua not as JSON but as ``<snapshot 0|1>|<bids>|<asks>``,
each side ``price qty price qty ...`` (canonical texts: digits and ".", never a space or
"|"): Lua reads it with one pattern, and builds the update's data itself.

Pub/sub: one Redis channel per gateway channel, ``wsg:updates:<channel>``; each pub/sub
message carries every update of that channel from one publish script call::

    W2 <ts> <K> <first seq> <epoch> <topic length> [x K] <topic index> <data length> [...]\n
    <topic bytes> [x K] <data bytes> [each update]

The header is one line of space-separated fields (epochs are URL-safe base64, numbers are
decimal), so one ``split`` parses it. It lists the frame's K topics once each (the seq of
the topic's first update in the frame, its epoch, the length of its name), then each
update in publish order as the 1-based index of its topic and the length of its data: a
topic's updates within one frame have consecutive seqs in one epoch (publish.lua numbers
them so), so neither is repeated per update. Topics and data are length-prefixed, so they
may hold any byte. (``W1`` repeated seq, epoch and topic per update: decoding it, with
Update's own constructor, took 3.9 µs per update on the 2-core development host, 100
updates of 10 topics per frame; now 2.0 µs.) The data bytes are handed on as an
:class:`orjson.Fragment`: the channel embeds them in its frames without decoding and
encoding them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ..book import Delta
from .base import HistoryPolicy, Message, Update

PREFIX = "wsg"
FRAME_VERSION = b"W2"
#: the index set of node ids; each record is ``<NODES_KEY>:<node id>`` (same hash tag)
NODES_KEY = f"{PREFIX}:{{nodes}}"


def meta_key(channel: str, topic: str) -> str:
    return f"{PREFIX}:{{{channel}:{topic}}}:meta"


def history_key(channel: str, topic: str) -> str:
    return f"{PREFIX}:{{{channel}:{topic}}}:history"


def book_keys(channel: str, topic: str) -> tuple[str, str, str]:
    """A book topic's bids and asks (sorted sets) and its qty by level (hash)."""
    tag = f"{PREFIX}:{{{channel}:{topic}}}"
    return f"{tag}:bids", f"{tag}:asks", f"{tag}:levels"


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


def delta_text(delta: Delta) -> bytes:
    """A book message as publish.lua reads it (the module's docstring)."""
    bids = " ".join([text for level in delta.bids for text in level])
    asks = " ".join([text for level in delta.asks for text in level])
    return f"{'1' if delta.snapshot else '0'}|{bids}|{asks}".encode()


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
    topics: dict[tuple[str, str], tuple[int, bool]] = {}  # index, is a book
    topic_args: list[Any] = []
    keys: list[str] = []
    layout: list[int] = []
    blob: list[bytes] = []
    dumps = data_bytes
    for message in messages:
        channel, topic = message.channel, message.topic
        known = topics.get((channel, topic))
        if known is None:
            policy = policies.get(channel, default)
            channel_index = channels.get(channel)
            if channel_index is None:
                channel_index = channels[channel] = len(channels) + 1
                channel_args += (
                    updates_channel(channel),
                    policy.size,
                    milliseconds(policy.ttl),
                    milliseconds(policy.topic_ttl),
                    policy.mode,
                    policy.max_book_levels,
                    1 if policy.checksum else 0,
                )
            known = topics[channel, topic] = (len(topics) + 1, policy.mode == "book")
            topic_args += (channel_index, topic)
            keys += (meta_key(channel, topic), history_key(channel, topic))
            if known[1]:
                keys += book_keys(channel, topic)
        index, is_book = known
        data = delta_text(message.data) if is_book else dumps(message.data)
        layout += (index, len(data))
        blob.append(data)
    return keys, [
        repr(ts),
        epoch_candidate,
        len(channels),
        *channel_args,
        *topic_args,
        # one join of all the numbers: a string per message cost more than the rest
        " ".join(map(str, layout)),
        b"".join(blob),
    ]


def milliseconds(seconds: float) -> int:
    """A TTL for PEXPIRE: at least 1 ms (0 would delete the key at once)."""
    return max(1, round(seconds * 1000))


def _update_maker() -> Callable[[str, str, int, float, Any, str], Update]:
    """A constructor of :class:`Update` for the pub/sub reader's hot loop.

    Update is a frozen dataclass, whose ``__init__`` sets each field through
    ``object.__setattr__``: on the development host that took 3.4 µs per update, more than
    the rest of the decoding. Setting the slots through their descriptors makes the same
    object (frozen, equal to one built by ``Update(...)``) in 2.1 µs.
    """
    new = object.__new__
    set_channel, set_topic, set_seq, set_ts, set_data, set_epoch = (
        getattr(Update, name).__set__ for name in ("channel", "topic", "seq", "ts", "data", "epoch")
    )

    def make(channel: str, topic: str, seq: int, ts: float, data: Any, epoch: str) -> Update:
        update: Update = new(Update)
        set_channel(update, channel)
        set_topic(update, topic)
        set_seq(update, seq)
        set_ts(update, ts)
        set_data(update, data)
        set_epoch(update, epoch)
        return update

    return make


_make_update = _update_maker()


def decode_updates(channel: str, payload: bytes) -> list[Update]:
    """The updates of one pub/sub message on ``updates_channel(channel)``.

    Raises ValueError when the payload is not a well-formed frame.
    """
    end = payload.index(b"\n")
    fields = payload[:end].split(b" ")
    if fields[0] != FRAME_VERSION or len(fields) < 6:
        raise ValueError("not a wsgateway update frame")
    ts = float(fields[1])
    count = int(fields[2])
    table_end = 3 + 3 * count
    if count < 1 or len(fields) < table_end + 2 or (len(fields) - table_end) % 2:
        raise ValueError("not a wsgateway update frame")
    position = end + 1
    names: list[str] = []
    seqs: list[int] = []
    epochs: list[str] = []
    for i in range(3, table_end, 3):
        seqs.append(int(fields[i]))
        epochs.append(fields[i + 1].decode())
        name_end = position + int(fields[i + 2])
        names.append(payload[position:name_end].decode())
        position = name_end
    updates = []
    fragment = orjson.Fragment
    make = _make_update
    size = len(payload)
    for index, length in zip(
        map(int, fields[table_end::2]), map(int, fields[table_end + 1 :: 2]), strict=True
    ):
        if not 0 < index <= count:
            raise ValueError("update frame names a topic it does not list")
        index -= 1
        data_end = position + length
        if data_end > size:
            raise ValueError("update frame shorter than its header says")
        seq = seqs[index]
        seqs[index] = seq + 1  # a topic's updates in one frame have consecutive seqs
        updates.append(
            make(
                channel, names[index], seq, ts, fragment(payload[position:data_end]), epochs[index]
            )
        )
        position = data_end
    if position != size:
        raise ValueError("update frame longer than its header says")
    return updates


def decode_entry(channel: str, topic: str, epoch: str, entry: Sequence[Any]) -> Update:
    """One history stream entry (``[id, [field, value, ...]]`` as XRANGE answers it)."""
    entry_id, pairs = entry
    fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
    seq = int(entry_id.split(b"-", 1)[0])
    return Update(channel, topic, seq, float(fields[b"t"]), orjson.Fragment(fields[b"d"]), epoch)
