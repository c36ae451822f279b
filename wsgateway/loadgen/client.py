"""The bench client: a bare ``asyncio.Protocol`` speaking just enough WebSocket.

It does its own upgrade handshake, writes masked client frames and never parses a server
frame: it counts update markers and samples latency stamps (see the package docstring).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from array import array
from typing import cast

from .payload import book_stamp

#: Counted once per delivered update; the peers' JSON may put a space after the colon, so
#: the marker is the value alone. Topics and data are ours and never contain it.
UPDATE = b'"update"'
TAIL = len(UPDATE) - 1
PREFIXES = tuple(UPDATE[:n] for n in range(1, len(UPDATE)))  # a chunk ending so may split one
T_FIELD = b'"t":'
CONNECTING, SUBSCRIBING, OPEN = 0, 1, 2


class Stats:
    """Counters shared by all clients; kept flat because data_received touches them."""

    __slots__ = (
        "book",
        "close_codes",
        "delivered",
        "lost",
        "samples",
        "sampling",
        "target",
        "unparsed",
        "waiter",
    )

    def __init__(self, book: bool = False) -> None:
        self.book = book  # the data are book deltas: the stamp is the ask's quantity
        self.delivered = 0
        self.sampling = False
        self.samples = array("d")  # publish-to-receive latency, seconds
        self.target = 0
        self.waiter: asyncio.Future[None] | None = None
        self.lost = 0
        self.unparsed = 0
        self.close_codes: dict[int, int] = {}

    async def wait_delivered(self, target: int) -> None:
        """Return once ``delivered >= target`` (the caller bounds the wait)."""
        if self.delivered >= target:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.target, self.waiter = target, waiter
        try:
            await waiter
        finally:
            self.waiter = None


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame (RFC 6455, 5.3: clients must mask)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    mask = os.urandom(4)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + masked


class Client(asyncio.Protocol):
    """One WebSocket client that counts updates and samples latency, nothing more."""

    def __init__(
        self,
        stats: Stats,
        request: bytes,
        accept: bytes,
        subscribe: bytes | None,
        slow: bool,
        ready: asyncio.Future[None],
        sampler: bool = True,
    ) -> None:
        self.stats = stats
        self.sampler = sampler
        self.request = request
        self.accept = accept
        self.subscribe = subscribe
        self.slow = slow
        self.ready = ready
        self.phase = CONNECTING
        self.buffer = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.phase != OPEN:
            self._setup(data)
            return
        stats = self.stats
        count = data.count(UPDATE)
        tail = self.tail
        if tail:
            # Both pieces are shorter than the marker, so a match here spans the boundary.
            count += (tail + data[:TAIL]).count(UPDATE)
            if len(data) < TAIL:
                data = tail + data
        # Keep the last bytes only when they could start a marker: most chunks end a frame
        # with "}", and then the next chunk needs no boundary check at all.
        self.tail = data[-TAIL:] if data.endswith(PREFIXES) else b""
        stats.delivered += count
        if stats.sampling and self.sampler:
            if stats.book:
                self._sample_book(data)
            else:  # inline: the common case, on the generator's hot path
                start = data.find(T_FIELD)
                if start >= 0:
                    end = data.find(b",", start, start + 40)
                    if end < 0:
                        end = data.find(b"}", start, start + 40)
                    if end > 0:
                        try:
                            stats.samples.append(time.time() - float(data[start + 4 : end]))
                        except ValueError:  # not our stamp (try is cheaper than suppress)
                            stats.unparsed += 1
        if b"\x89" in data or b"\x88" in data:
            self._control(data)
        waiter = stats.waiter
        if waiter is not None and stats.delivered >= stats.target and not waiter.done():
            waiter.set_result(None)

    def _sample_book(self, data: bytes) -> None:
        stamp = book_stamp(data)
        if stamp is not None:
            try:
                self.stats.samples.append(time.time() - float(stamp))
            except ValueError:
                self.stats.unparsed += 1

    def _control(self, data: bytes) -> None:
        # Updates are ASCII JSON, so 0x89/0x88 come from frame headers: a ping or a close,
        # or rarely a length byte. Without a frame parser a ping split across chunks is
        # missed and a length byte may draw an unsolicited pong, which RFC 6455 allows.
        transport = self.transport
        assert transport is not None
        for opcode in (0x89, 0x88):
            i = data.find(bytes((opcode,)))
            while 0 <= i < len(data) - 1:
                length = data[i + 1]
                payload = data[i + 2 : i + 2 + length]
                if length <= 125 and len(payload) == length:
                    if opcode == 0x89:
                        transport.write(client_frame(0xA, payload))
                    elif length >= 2:
                        code = int.from_bytes(payload[:2], "big")
                        if 1000 <= code < 5000:
                            self.stats.close_codes[code] = self.stats.close_codes.get(code, 0) + 1
                            transport.write(client_frame(0x8, payload[:2]))
                            transport.close()
                            return
                i = data.find(bytes((opcode,)), i + 1)

    def _setup(self, data: bytes) -> None:
        buffer = self.buffer + data
        transport = self.transport
        assert transport is not None
        if self.phase == CONNECTING:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            head = buffer[:end].lower()
            if not head.startswith(b"http/1.1 101") or self.accept.lower() not in head:
                status = buffer[:end].split(b"\r\n", 1)[0]
                self._fail(f"upgrade refused: {status!r}")
                return
            buffer = buffer[end + 4 :]
            if self.subscribe is None:
                self._opened(buffer)
                return
            self.phase = SUBSCRIBING
            transport.write(self.subscribe)
        at = buffer.find(b'"subscribed"')
        if at < 0:
            if b'"error"' in buffer:
                self._fail(f"subscribe refused: {buffer[:200]!r}")
            else:
                self.buffer = buffer
            return
        self._opened(buffer[at:])

    def _opened(self, rest: bytes) -> None:
        self.phase = OPEN
        self.buffer = b""
        if not self.ready.done():
            self.ready.set_result(None)
        if self.slow:
            assert self.transport is not None
            self.transport.pause_reading()
        elif rest:
            self.data_received(rest)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == OPEN:
            self.stats.lost += 1
        elif not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost during setup: {exc}"))

    def abort(self) -> None:
        self.phase = CONNECTING  # a connection we drop ourselves is not "lost"
        if self.transport is not None:
            self.transport.abort()
