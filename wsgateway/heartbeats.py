"""Position heartbeats (``"heartbeat": N`` in a subscribe): every N seconds, a frame telling
the connection where each of its topics stands, so that a client can tell a quiet topic from
a dead feed and notice a lost final update (docs/protocol.md, "heartbeat").

One timer per connection that asked, rather than a channel-wide ticker: it costs nothing for
the connections that did not ask (most of them), nothing at all when nobody did, and fires
exactly on each connection's interval without a scan of the others. What a heartbeat
reports, and why it is never ahead of what the connection was sent, is the channel's to say
(:meth:`Channel.heartbeat_positions`); this module only keeps time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from .connection import Connection


@dataclass(slots=True)
class _Timer:
    seconds: int
    handle: asyncio.TimerHandle
    #: heartbeats sent since the subscribe that set this interval
    sent: int = 0


class Heartbeats:
    """The heartbeat timers of one channel's connections.

    ``send(conn, n)`` builds and queues heartbeat number ``n`` for ``conn``; a connection
    that is closing (or that the send closed, a slow consumer) gets no more.
    """

    def __init__(self, send: Callable[[Connection, int], None]) -> None:
        self._send = send
        self._timers: dict[Connection, _Timer] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def set(self, conn: Connection, seconds: int) -> None:
        """A heartbeat every ``seconds`` from now on (0: none); the latest call wins, and its
        count starts again at 1."""
        self.stop(conn)
        if seconds <= 0 or conn.closing:
            return
        handle = asyncio.get_running_loop().call_later(seconds, self.beat, conn)
        self._timers[conn] = _Timer(seconds, handle)

    def stop(self, conn: Connection) -> None:
        timer = self._timers.pop(conn, None)
        if timer is not None:
            timer.handle.cancel()

    def beat(self, conn: Connection) -> None:
        """Send ``conn``'s next heartbeat (the timer's callback), and arm the one after."""
        timer = self._timers.get(conn)
        if timer is None or conn.closing:
            return
        timer.sent += 1
        self._send(conn, timer.sent)
        if not conn.closing:
            timer.handle = asyncio.get_running_loop().call_later(timer.seconds, self.beat, conn)

    def handle(self, conn: Connection) -> asyncio.TimerHandle | None:
        """The pending timer of ``conn`` (tests fire it by hand)."""
        timer = self._timers.get(conn)
        return None if timer is None else timer.handle
