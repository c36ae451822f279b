"""Test doubles for the fan-out: a transport, a clock, and a channel wired to both.

Nothing here opens a socket. ``FakeTransport`` stands in for the asyncio transport under a
WebSocket and records every ``write``; ``decode_frames`` turns those bytes back into the
JSON objects a client would read, parsing the RFC 6455 framing independently of
``wsgateway.protocol`` so that a framing bug cannot cancel itself out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from wsgateway.brokers.base import NO_POSITION, History, Position, Update
from wsgateway.channel import Channel
from wsgateway.connection import Connection
from wsgateway.metrics import GatewayMetrics
from wsgateway.settings import Limits

#: Where a FakeClock starts: a plausible Unix time, so timestamps look like real ones.
EPOCH = 1_700_000_000.0


#: Channel.footprint() of a channel with nothing left: every structure empty.
IDLE_FOOTPRINT = {
    "connections": 0,
    "admitting": 0,
    "topics": 0,
    "wildcard": 0,
    "addresses": 0,
    "dirty": 0,
    "held": 0,
    "lagging": 0,
    "recovering": 0,
    "capped": 0,
    "heartbeats": 0,
}


class FakeTransport:
    """The part of ``asyncio.Transport`` the channel uses, recording what is written.

    ``buffer_size`` is what ``get_write_buffer_size()`` reports: set it to simulate a client
    that stopped reading (the kernel no longer takes our bytes). With ``stopped`` set, every
    write also stays in that buffer, as with a peer that never reads. ``closing`` is what
    ``is_closing()`` reports. Set ``write_error`` to an exception to make ``write`` raise it.
    """

    def __init__(self, buffer_size: int = 0, *, stopped: bool = False) -> None:
        self.writes: list[bytes] = []
        self.buffer_size = buffer_size
        self.stopped = stopped
        self.closing = False
        self.write_error: BaseException | None = None

    def write(self, data: bytes) -> None:
        if self.write_error is not None:
            raise self.write_error
        assert isinstance(data, bytes | bytearray | memoryview), type(data)
        self.writes.append(bytes(data))
        if self.stopped:
            self.buffer_size += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def is_closing(self) -> bool:
        return self.closing

    @property
    def data(self) -> bytes:
        """Every byte written so far, in order."""
        return b"".join(self.writes)


class FakeClock:
    """A clock for ``clock=`` arguments: returns ``now``; tests set or advance it."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, now: float) -> None:
        self.now = now


class RecordingCloser:
    """A ``Closer`` that remembers each ``(code, message)`` it was asked to close with."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, code: int, message: str) -> None:
        self.calls.append((code, message))

    @property
    def codes(self) -> list[int]:
        return [code for code, _ in self.calls]


def decode_frame_payloads(data: bytes) -> list[bytes]:
    """Split ``data`` into the payloads of complete server-to-client text frames.

    Accepts only what a server may send on this API: FIN set, opcode 1 (text), no mask
    (RFC 6455, 5.1: a server must not mask), minimal 7-, 16- or 64-bit lengths. Anything
    else, including trailing bytes of an incomplete frame, fails the test.
    """
    payloads: list[bytes] = []
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        assert len(view) - offset >= 2, f"truncated frame header at byte {offset}"
        first, second = view[offset], view[offset + 1]
        assert first == 0x81, f"expected FIN + text opcode (0x81), got {first:#04x}"
        assert not second & 0x80, "server frames must not be masked"
        length = second & 0x7F
        offset += 2
        if length == 126:
            assert len(view) - offset >= 2, "truncated 16-bit length"
            (length,) = struct.unpack_from("!H", view, offset)
            assert length >= 126, "16-bit length used for a short payload"
            offset += 2
        elif length == 127:
            assert len(view) - offset >= 8, "truncated 64-bit length"
            (length,) = struct.unpack_from("!Q", view, offset)
            assert length >= 65536, "64-bit length used for a payload under 64 KiB"
            assert not length >> 63, "the most significant bit of a 64-bit length must be 0"
            offset += 8
        assert len(view) - offset >= length, (
            f"truncated payload: {length} bytes announced, {len(view) - offset} left"
        )
        payloads.append(bytes(view[offset : offset + length]))
        offset += length
    return payloads


def decode_frames(data: bytes) -> list[Any]:
    """The JSON objects carried by the server text frames in ``data``, in order."""
    return [orjson.loads(payload) for payload in decode_frame_payloads(data)]


def written_messages(transport: FakeTransport) -> list[Any]:
    """Every JSON message written to ``transport`` so far, in order."""
    return decode_frames(transport.data)


@dataclass
class Client:
    """One open connection of a test channel, with its fake transport and closer."""

    conn: Connection
    transport: FakeTransport
    closer: RecordingCloser
    address: str

    def messages(self) -> list[Any]:
        return written_messages(self.transport)


@dataclass
class Harness:
    """A channel wired to a fresh registry and a fake clock (see :func:`make_channel`)."""

    channel: Channel
    registry: CollectorRegistry
    metrics: GatewayMetrics
    clock: FakeClock
    clients: list[Client] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.channel.name

    def value(self, metric: str, **labels: str) -> float | None:
        """A sample of ``metric`` for this channel (``channel`` label added), or None."""
        return self.registry.get_sample_value(metric, {"channel": self.name, **labels})

    def open(
        self,
        address: str = "10.0.0.1",
        *,
        user: str | None = None,
        transport: FakeTransport | None = None,
        fd: int = -1,
    ) -> Client:
        """Admit and open a connection, as the WebSocket handler does after the upgrade."""
        return open_connection(self, address, user=user, transport=transport, fd=fd)


def make_channel(name: str = "ticker", **limits: Any) -> Harness:
    """A :class:`Channel` named ``name`` with ``limits`` overriding the defaults.

    Its mode is ``stream`` unless ``limits`` say otherwise, whatever its name (``auto``
    would make "ticker" a ``last`` channel): most tests are about numbering, fan-out and
    limits, which every mode shares; the tests of ``last`` and ``book`` ask for them.

    The registry is fresh (never the global one) and a single :class:`FakeClock` drives the
    channel (admission window, and as its wall clock the delivery latency) and the metrics
    (last-error timestamps).
    """
    limits.setdefault("mode", "stream")
    clock = FakeClock()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, clock=clock)
    channel = Channel(
        name, Limits(**limits), metrics.for_channel(name), clock=clock, wall_clock=clock
    )
    return Harness(channel, registry, metrics, clock)


def open_connection(
    harness: Harness,
    address: str = "10.0.0.1",
    *,
    user: str | None = None,
    transport: FakeTransport | None = None,
    fd: int = -1,
) -> Client:
    """``admit`` + ``open`` on ``harness.channel`` with a FakeTransport and a RecordingCloser;
    ``fd``, a socket the flush may write to directly (-1: only the transport)."""
    transport = transport if transport is not None else FakeTransport()
    closer = RecordingCloser()
    harness.channel.admit(address)
    conn = harness.channel.open(transport, closer, address, user, fd)
    client = Client(conn, transport, closer, address)
    harness.clients.append(client)
    return client


def subscribe(
    channel: Channel,
    conn: Connection,
    topics: Iterable[str],
    since: Mapping[str, Position] | None = None,
    *,
    history: History | None = None,
    max_rate: float | None = None,
) -> tuple[str, ...]:
    """``channel.subscribe`` completed at once, as Gateway.subscribe does once the broker
    answered: ``history`` for every topic that needed the broker (default: a topic the
    broker holds no state for). Returns the topics of the reply."""
    joining = channel.subscribe(conn, topics, since, max_rate)
    for recovery in joining.pending:
        channel.complete(recovery, history or History(NO_POSITION, []))
    return joining.topics


def make_update(
    topic: str = "BTC-USD",
    seq: int = 1,
    data: Any = None,
    *,
    channel: str = "ticker",
    ts: float = EPOCH,
    epoch: str = "",
) -> Update:
    """A numbered message as a broker hands it to the channel."""
    return Update(channel, topic, seq, ts, {"price": seq} if data is None else data, epoch)
