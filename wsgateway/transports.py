"""Which transports the fan-out may write past, straight to the socket.

The flush writes a client's frames with ``os.write`` on the socket's descriptor when the
transport has nothing queued (``Channel._write_outboxes``): the same ``write(2)`` the
transport would make, without its per-call bookkeeping. That is only correct for a plain TCP
transport, whose bytes go to the socket as they are. A TLS transport encrypts them first, and
any other kind is unknown to us, so those always go through ``transport.write``.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextlib
import socket

# Neither class is in the type stubs (asyncio's is private; uvloop's is compiled).
PLAIN_TCP: tuple[type, ...] = (asyncio.selector_events._SelectorSocketTransport,)  # type: ignore[attr-defined]
try:
    import uvloop.loop

    PLAIN_TCP += (uvloop.loop.TCPTransport,)  # type: ignore[attr-defined]
except ImportError:  # uvloop is optional
    pass


def direct_fd(transport: asyncio.BaseTransport) -> int:
    """The socket descriptor under ``transport`` if frames may be written to it directly,
    else -1."""
    if type(transport) not in PLAIN_TCP:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


#: Bytes the kernel may hold unsent for a client of a last or book channel. What the kernel
#: holds is past conflation's reach: with the default (the whole send buffer, autotuned up
#: to 4 MB on loopback) a slow reader of a conflating channel had seconds of stale frames
#: queued there, and missed its heartbeat pong behind them (the replay harness,
#: benchmarks/README.md). Bytes in flight are not counted (TCP_NOTSENT_LOWAT), so a fast
#: client on a long path keeps its throughput.
CONFLATING_UNSENT_BYTES = 16_384


def limit_unsent(transport: asyncio.BaseTransport, size: int) -> None:
    """Have the kernel take at most ``size`` unsent bytes for ``transport``'s socket
    (Linux and macOS ``TCP_NOTSENT_LOWAT``); the rest waits in our queue, where it can be
    merged. Nothing happens elsewhere, or on a transport without a socket."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None or not hasattr(sock, "setsockopt"):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, size)
