"""Socket release: every connection the gateway closes lets go of its socket in bounded time.

A WebSocket close is polite: send a close frame, wait for the client's, then close the
transport, which first writes out what it still buffers. A client that never reads never
lets that happen, and the socket, its descriptor and its kernel send buffer (~3.7 MiB on
Linux loopback) stay with the process for good, after the connection has left its channel
and every gauge says it is gone. So every close, whoever starts it (the gateway: slow
consumer, shutdown, token expiry, a policy violation; aiohttp: a missed heartbeat pong, a
bad frame; the client), is handed to :class:`SocketRelease`, which gives the socket
``close_timeout`` seconds and then resets it.

The reset sets ``SO_LINGER`` to zero before ``transport.abort()``: the kernel then drops the
unread send buffer at once and answers with RST, instead of keeping an orphaned socket that
holds the buffer until the peer reads or TCP gives up minutes later.

A socket the process has already closed can still hold its send buffer in the kernel (an
orphan, when the client reads nothing and the transport had handed everything to the
kernel, e.g. at a missed heartbeat pong): :func:`bound_unacked_time` sets
``TCP_USER_TIMEOUT``, so the kernel drops such a connection once its bytes have waited that
long for the client (zero-window probes included), instead of probing it for minutes.

Only what both asyncio's and uvloop's transports offer is used (``is_closing``,
``get_write_buffer_size``, ``get_extra_info("socket")``, ``abort``): uvloop's transport is
not an ``asyncio.WriteTransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Protocol

#: SO_LINGER on, zero seconds: close(2) discards unsent data and sends RST.
_RESET = struct.pack("ii", 1, 0)


class ClosingTransport(Protocol):
    """The part of an asyncio (or uvloop) transport a release needs."""

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def get_extra_info(self, name: str, default: object = None) -> object: ...

    def abort(self) -> None: ...


def is_released(transport: ClosingTransport) -> bool:
    """True when the socket is closed, or sure to be closed without the client's help.

    A closing transport with nothing buffered has its ``connection_lost`` scheduled (asyncio
    and uvloop alike); one that still buffers bytes waits for the client to read them.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(sock, "fileno") or sock.fileno() < 0:
        return True
    return transport.is_closing() and not transport.get_write_buffer_size()


def reset(transport: ClosingTransport) -> None:
    """Drop the connection now: discard what is unsent, RST the peer, free the socket."""
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(sock, "setsockopt"):
        with contextlib.suppress(OSError):  # already closed: abort() below is a no-op then
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()


def bound_unacked_time(transport: ClosingTransport, seconds: float) -> None:
    """Have the kernel drop the connection when sent bytes wait ``seconds`` for the client
    (Linux ``TCP_USER_TIMEOUT``; elsewhere nothing changes)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None or not hasattr(sock, "setsockopt"):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(seconds * 1000)))


class SocketRelease:
    """The sockets of connections that have ended (or are ending) but may not be closed yet.

    :meth:`release` arms one timer per such socket; at ``close_timeout`` a socket that is
    still held is reset. The scrape counts the ones still held (``wsgateway_open_sockets``),
    so a socket that outlives its connection is visible.
    """

    def __init__(self, close_timeout: float) -> None:
        self.close_timeout = close_timeout
        self._pending: dict[ClosingTransport, asyncio.TimerHandle] = {}

    def release(self, transport: ClosingTransport) -> None:
        """Make sure ``transport``'s socket is gone within ``close_timeout`` from the first
        call. Idempotent: later calls keep the first deadline, and forget a socket that has
        been released meanwhile (so a clean close holds no timer and no reference)."""
        pending = self._pending.get(transport)
        if is_released(transport):
            if pending is not None:
                pending.cancel()
                del self._pending[transport]
            return
        if pending is None:
            self._pending[transport] = asyncio.get_running_loop().call_later(
                self.close_timeout, self._deadline, transport
            )

    def _deadline(self, transport: ClosingTransport) -> None:
        del self._pending[transport]
        if not is_released(transport):
            reset(transport)

    def held(self) -> int:
        """Sockets of ended connections that this process still holds (read at scrape time;
        the set is as large as the closes of the last ``close_timeout`` seconds)."""
        return sum(1 for transport in self._pending if not is_released(transport))
