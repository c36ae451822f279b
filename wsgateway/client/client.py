"""The client: one WebSocket at a time to a gateway channel, reconnected and resumed so
that the updates it yields are every update of its topics, once, in order, or a
:class:`~.events.Gap` where the gateway lost some for good.

The iterator does the work (no background task): each ``__anext__`` reads frames until it
has an event. A consumer that stops reading therefore stops reading the socket too, and
the gateway's slow-consumer rule (1013) applies to it rather than an unbounded queue in
this process; after a 1013 the client reconnects and resumes with ``since``.

Decisions live in pure modules: :mod:`.streams` (continuity), :mod:`.policy` (retry or
give up); this one does the I/O and nothing it could hand to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from ..book import Book
from ..urls import gateway_url
from .events import (
    ClosedByGateway,
    ConnectFailed,
    ConnectRefused,
    Event,
    Gap,
    Position,
    SubscribeRefused,
)
from .policy import (
    STABLE_SECONDS,
    Backoff,
    after_close,
    after_error,
    after_refusal,
    retry_after_of,
)
from .streams import Hole, Streams

#: A frame observer (``on_frame``): called with every frame received, before the client acts on it.
FrameObserver = Callable[[dict[str, Any]], None]

#: Seconds to open the TCP connection (and TLS) of an attempt before trying again.
CONNECT_TIMEOUT = 10.0


class _UpgradeRefused(Exception):
    """The gateway answered the upgrade with an HTTP error (read before aiohttp drops the
    body, which says why)."""

    def __init__(self, status: int, error: str, message: str, retry_after: float | None):
        self.status, self.error, self.message, self.retry_after = (
            status,
            error,
            message,
            retry_after,
        )


async def _read_refusal(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    error = message = ""
    try:
        body = orjson.loads(await response.read())
        if isinstance(body, dict):
            error, message = str(body.get("error", "")), str(body.get("message", ""))
    except (orjson.JSONDecodeError, aiohttp.ClientError):
        pass  # not the gateway's JSON (a proxy's page): the status says enough
    retry_after = retry_after_of(response.headers.get("Retry-After"))
    raise _UpgradeRefused(response.status, error, message, retry_after)


class Client:
    """Subscribe to ``topics`` of ``channel`` and yield their events, across reconnects.

    ``url``: the gateway in any form ``wsgateway subscribe --url`` takes
    (``http://host:8080``, ``ws://host:8080/ws/ticker``, ``host:8080``). ``token``: a JWT
    for the ``user`` channel, sent as ``Authorization: Bearer``. ``heartbeat``: seconds
    between WebSocket pings (aiohttp's; a dead peer is noticed within about that time).
    ``backoff``: (initial, maximum) delay in seconds between attempts. ``session``: an
    aiohttp session of yours (its ``raise_for_status`` must stay off; the client then
    cannot read the body of a refused upgrade and names the HTTP status only).
    ``position_heartbeat``: ask the gateway for a ``heartbeat`` frame every that many
    seconds (1-3600): a topic whose position there is past the client's lost updates and is
    repaired, and a connection silent for twice that long is taken for dead (reconnect).
    ``reconnect=False``: a tool that reports rather than retries: every refusal, error
    reply, close and lost connection raises (a :class:`~.events.ClientStopped`); then
    ``topics`` may be ``["*"]`` (no resume needs their names; holes become gaps).
    ``on_frame``: called with every frame received (parsed), before the client acts on it.
    ``max_rate``: at most that many update frames a second per topic (last and book
    channels; the gateway merges the rest, ``from_seq``): for a screen, not for a book that
    must see every level change as it happens.

    ::

        async with Client("http://127.0.0.1:8080", "ticker", ["BTC-USD"]) as client:
            async for event in client:
                ...

    The iterator raises :class:`~.events.ClientStopped` when the gateway refuses the
    client for good, and ends after :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        topics: Iterable[str],
        *,
        token: str | None = None,
        heartbeat: float | None = None,
        backoff: tuple[float, float] = (0.5, 20.0),
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        position_heartbeat: int | None = None,
        reconnect: bool = True,
        on_frame: FrameObserver | None = None,
        max_rate: float | None = None,
    ) -> None:
        names = tuple(dict.fromkeys(topics))
        if not names or ("*" in names and reconnect):
            # A resume names its topics (since); "*" has none to name.
            raise ValueError('name the topics to subscribe to (not "*": a resume needs names)')
        if position_heartbeat is not None and not 1 <= position_heartbeat <= 3600:
            raise ValueError(f"position_heartbeat must be 1 to 3600 s, got {position_heartbeat}")
        self.url = gateway_url(url).ws(f"/ws/{channel}")
        self.channel = channel
        self.topics = names
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._heartbeat = heartbeat
        self._position_heartbeat = position_heartbeat
        self._max_rate = max_rate
        self._reconnect = reconnect
        self._on_frame = on_frame
        self._last_frame_at = 0.0
        self._backoff = Backoff(*backoff, random=(rng or random.Random()).random)
        self._session = session
        self._own_session = session is None
        self._streams = Streams(names)
        self._events: deque[Event] = deque()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected_at = 0.0
        self._delay: float | None = None  # before the next attempt; None: at once
        self._requests: dict[object, tuple[str, tuple[str, ...]]] = {}  # id: (type, topics)
        self._resends: list[tuple[float, tuple[str, ...]]] = []  # (when, topics)
        self._last_id = 0
        self._closed = False
        self._closing = asyncio.Event()
        #: connections opened so far (the first one included)
        self.connections = 0

    # -- what the application reads ------------------------------------------------------

    def position(self, topic: str) -> Position:
        """``(epoch, seq)`` of the last update of ``topic`` this client holds (``("", 0)``
        before it knows any)."""
        return self._streams.position(topic)

    def last(self, topic: str) -> Any:
        """The ``data`` of the newest update or snapshot of ``topic`` (None before the
        first one). For a book topic, that is what changed; :meth:`book` is the book."""
        return self._streams.last(topic)

    def book(self, topic: str) -> Book | None:
        """The client's copy of ``topic``'s order book (``.bids()``/``.asks()`` best
        first), checked against every checksum the gateway sent; None when the topic is
        not a book, or while its copy is being replaced (after a checksum :class:`Gap`,
        until the :class:`~.events.Snapshot`)."""
        return self._streams.book(topic)

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Event:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            try:
                await self._step()
            except Exception:  # ClientStopped, or a bug: nothing may stay open behind it
                await self.close()
                raise
        if self._closed:
            raise StopAsyncIteration
        return self._events.popleft()

    async def close(self) -> None:
        """End the connection and the iteration; the client cannot be used again."""
        self._closed = True
        self._closing.set()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._own_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the work --------------------------------------------------------------------------

    async def _step(self) -> None:
        """Connect, or read one frame (or send a subscribe that is due)."""
        if self._ws is None:
            await self._connect()
            return
        ws = self._ws
        now = asyncio.get_running_loop().time()
        deadlines = [when for when, _ in self._resends]
        if self._position_heartbeat:
            # Heartbeats come every N s whatever the traffic: 2 N of silence is a dead peer.
            deadlines.append(self._last_frame_at + 2 * self._position_heartbeat)
        timeout = max(0.001, min(deadlines) - now) if deadlines else None
        try:
            message = await ws.receive(timeout=timeout)
        except TimeoutError:
            now = asyncio.get_running_loop().time()
            if (
                self._position_heartbeat
                and now >= self._last_frame_at + 2 * self._position_heartbeat
            ):
                await self._ended(1006, "no frame within two heartbeats")
                return
            await self._send_due()
            return
        self._last_frame_at = asyncio.get_running_loop().time()
        if message.type is aiohttp.WSMsgType.TEXT:
            await self._handle(orjson.loads(message.data))
        elif message.type is aiohttp.WSMsgType.CLOSE:
            await self._ended(message.data, message.extra or "")
        elif message.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            await self._ended(ws.close_code, "")
        elif message.type is aiohttp.WSMsgType.ERROR:
            await self._ended(ws.close_code or 1006, str(message.data))
        # BINARY: not part of the protocol; ignored

    async def _connect(self) -> None:
        """Open a connection (after the pending delay) and subscribe, resuming every topic
        that has a position; retry what may pass, raise what will not."""
        if self._delay is not None:
            await self._sleep(self._delay)
        if self._closed:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                raise_for_status=_read_refusal,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
                ),
            )
        try:
            ws = await self._session.ws_connect(
                self.url, headers=self._headers, heartbeat=self._heartbeat
            )
        except _UpgradeRefused as refused:
            if not self._reconnect:
                raise ConnectRefused(
                    self.url, refused.status, refused.error, refused.message
                ) from None
            self._delay = after_refusal(
                self.url,
                refused.status,
                refused.error,
                refused.message,
                refused.retry_after,
                self._backoff,
            )
            return
        except aiohttp.WSServerHandshakeError as refused:
            header = refused.headers.get("Retry-After") if refused.headers else None
            retry_after = retry_after_of(header)
            if not self._reconnect:
                raise ConnectRefused(self.url, refused.status, "", "") from None
            self._delay = after_refusal(
                self.url, refused.status, "", "", retry_after, self._backoff
            )
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as failed:
            if self._closed:  # close() closed the session under the attempt
                return
            if not self._reconnect:
                raise ConnectFailed(
                    self.url, f"cannot connect: {failed or type(failed).__name__}"
                ) from None
            self._delay = self._backoff.next()  # unreachable: try again later
            return
        if self._closed:
            await ws.close()
            return
        self._ws = ws
        self.connections += 1
        self._connected_at = self._last_frame_at = asyncio.get_running_loop().time()
        self._delay = None
        await self._subscribe(self.topics, first=True)

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if the client is closed meanwhile."""
        try:
            async with asyncio.timeout(delay):
                await self._closing.wait()
        except TimeoutError:
            pass

    async def _handle(self, frame: dict[str, Any]) -> None:
        if self._on_frame is not None:
            self._on_frame(frame)
        kind = frame.get("type")
        if kind == "update":
            verdict = self._streams.on_update(frame)
            await self._take([verdict])
            if isinstance(verdict, Gap):  # a new epoch nobody announced: then its update
                await self._take([self._streams.accept(frame)])
        elif kind == "snapshot":
            await self._take(self._streams.on_snapshot(frame))
        elif kind == "subscribed":
            self._requests.pop(frame.get("id"), None)
            self._events.extend(self._streams.on_subscribed(frame.get("positions") or {}))
        elif kind == "heartbeat":
            await self._take(self._streams.on_heartbeat(frame))
        elif kind == "reset":
            await self._take(self._streams.on_reset(frame))
        elif kind == "error":
            await self._refused(frame)
        # unsubscribed, pong, and kinds this version does not know: nothing to do

    async def _take(self, verdicts: Iterable[Event | Hole | None]) -> None:
        """Queue the events; repair the holes (a fresh one: without ``since``)."""
        for verdict in verdicts:
            if isinstance(verdict, Hole):
                if verdict.gap is not None:
                    self._events.append(verdict.gap)
                await self._repair(verdict.topic)
            elif verdict is not None:
                self._events.append(verdict)

    async def _refused(self, frame: dict[str, Any]) -> None:
        """An ``error`` reply: resend a subscribe later, or give up (policy.after_error)."""
        request = self._requests.pop(frame.get("id"), None)
        if request is None:
            return
        kind, topics = request
        if not self._reconnect:
            raise SubscribeRefused(str(frame.get("code")), str(frame.get("message", "")), topics)
        delay = after_error(
            str(frame.get("code")),
            str(frame.get("message", "")),
            retry_after_of(frame.get("retry_after")),
            topics,
            self._backoff,
        )
        if kind == "unsubscribe":
            # The repair's subscribe, sent right behind it, found the topic still held and
            # replays nothing: start over on a new connection, which resumes everything.
            await self._drop(delay)
            return
        self._resends.append((asyncio.get_running_loop().time() + delay, topics))

    async def _send_due(self) -> None:
        now = asyncio.get_running_loop().time()
        due = [topics for when, topics in self._resends if when <= now]
        self._resends = [(when, topics) for when, topics in self._resends if when > now]
        for topics in due:
            await self._subscribe(topics, first=topics == self.topics)

    async def _repair(self, topic: str) -> None:
        """A hole inside this connection: unsubscribe and subscribe again with ``since``;
        the gateway replays what is missing (its history) or says it cannot (a Gap). A book
        being resynced has no ``since`` (Streams.since leaves it out) and gets a snapshot.
        Cheaper than a reconnect, and the other topics do not notice. Frames are answered in
        order, so the subscribe finds the topic released."""
        await self._send("unsubscribe", (topic,))
        await self._subscribe((topic,))

    async def _subscribe(self, topics: tuple[str, ...], *, first: bool = False) -> None:
        """Subscribe; ``first``: the connection's own subscribe (or its resend), which asks
        for the position heartbeats (a repair's does not: each one would restart their
        count and timer)."""
        heartbeat = self._position_heartbeat if first else None
        await self._send("subscribe", topics, self._streams.since(topics), heartbeat)

    async def _send(
        self,
        kind: str,
        topics: tuple[str, ...],
        since: dict[str, Any] | None = None,
        heartbeat: int | None = None,
    ) -> None:
        if self._ws is None:
            return
        self._last_id += 1
        frame: dict[str, Any] = {"type": kind, "topics": list(topics), "id": self._last_id}
        if since:
            frame["since"] = since
        if heartbeat:
            frame["heartbeat"] = heartbeat
        if kind == "subscribe" and self._max_rate:
            frame["max_rate"] = self._max_rate  # every subscribe, repairs too: per topic
        self._requests[self._last_id] = (kind, topics)
        # A connection that is gone: the next receive reports it.
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await self._ws.send_str(orjson.dumps(frame).decode())

    async def _ended(self, code: int | None, reason: str) -> None:
        """The connection ended: reconnect after the delay the close code asks for."""
        await self._drop(None, code, reason)

    async def _drop(self, delay: float | None, code: int | None = None, reason: str = "") -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        self._streams.disconnected()
        self._requests.clear()
        self._resends.clear()
        if self._closed:
            return
        if not self._reconnect:
            if code is None or code == 1006:
                raise ConnectFailed(self.url, reason or "the connection was lost (no close frame)")
            raise ClosedByGateway(code, reason)
        if asyncio.get_running_loop().time() - self._connected_at >= STABLE_SECONDS:
            self._backoff.reset()
        self._delay = delay if delay is not None else after_close(code, reason, self._backoff)
