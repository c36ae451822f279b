"""One client connection: its outbox, its inbound limiter, its subscriptions.

The connection knows nothing about aiohttp: it writes to a ``Transport`` (the asyncio
transport under the WebSocket, or a fake in tests) and asks a ``closer`` callback to close
it with a close code. A ``Connection`` is deliberately small (``__slots__``): a gateway holds
tens of thousands of idle ones.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import TYPE_CHECKING, Any, Protocol

from .ratelimit import StrikeCounter, TokenBucket

if TYPE_CHECKING:
    from .conflation import Pending

# Rate-limit violations within STRIKE_WINDOW seconds that turn a client into an abuser (1008).
STRIKE_LIMIT = 5
STRIKE_WINDOW = 10.0
NO_TOPICS: frozenset[str] = frozenset()


class Transport(Protocol):
    """The part of ``asyncio.Transport`` the fan-out uses."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


Closer = Callable[[int, str], None]


class Connection:
    """A client of one channel. Owned by its :class:`~wsgateway.channel.Channel`."""

    __slots__ = (
        "_strikes",
        "_topics",
        "address",
        "all_topics",
        "backlog",
        "broker_reads",
        "bucket",
        "caps",
        "closer",
        "closing",
        "conflating",
        "end_reason",
        "fd",
        "frames_out",
        "lagging_since",
        "others",
        "outbox",
        "outbox_bytes",
        "transport",
        "user",
        "written",
    )

    def __init__(
        self,
        transport: Transport,
        closer: Closer,
        *,
        address: str,
        messages_per_second: int,
        now: float,
        user: str | None = None,
        fd: int = -1,
    ) -> None:
        self.address = address
        #: the authenticated user id on private channels, else None
        self.user = user
        self.transport = transport
        #: the socket's descriptor when frames may bypass the transport (see
        #: Channel._write_outboxes), else -1
        self.fd = fd
        self.closer = closer
        # Created on the first subscribe and dropped with the last topic: an idle connection
        # costs no set (measured: 216 bytes each, at tens of thousands of connections).
        self._topics: set[str] | None = None
        #: subscribed to every topic: kept out of the per-topic sets so it gets each update once
        self.all_topics = False
        #: frames waiting for this loop turn's flush, and their size in bytes; on a last or
        #: book channel some may be conflation.Pending entries, made into frames when written
        self.outbox: list[Any] = []
        self.outbox_bytes = 0
        #: ``max_rate`` intervals in seconds, by topic (None: no topic is capped)
        self.caps: dict[str, float] | None = None
        #: the conflation entries open in the outbox, by topic (None: none, the common case)
        self.conflating: dict[str, Pending] | None = None
        #: the kinds (metrics.FRAME_KINDS) of the frames in the outbox that are not updates,
        #: None when all are: replies are rare, so a write or a drop of a whole outbox splits
        #: into updates and others with one subtraction, and fan-out marks nothing
        self.others: list[str] | None = None
        #: bytes the transport still held after the last flush (the kernel would not take them)
        self.backlog = 0
        #: bytes handed to its transport (or its socket) while it lagged, a running total:
        #: with what the transport still holds, the bytes its kernel took (:meth:`taken_bytes`;
        #: not counted otherwise, to keep the flush's common path one check shorter)
        self.written = 0
        #: when its pending bytes passed max_outbox_bytes (None: not lagging); see outbox.py
        self.lagging_since: float | None = None
        self.closing = False
        #: why it ended (a wsgateway_disconnects_total reason), once its channel removed it
        self.end_reason: str | None = None
        #: frames handed to its socket: counted per write of a whole outbox, not per frame
        #: queued, so the fan-out pays nothing for it (the session's access-log line)
        self.frames_out = 0
        self.bucket = TokenBucket(messages_per_second, messages_per_second, now)
        # Only a client that broke the rate limit needs a strike window (~900 bytes).
        self._strikes: StrikeCounter | None = None
        #: topics whose subscribe needed the broker (Gateway.subscribe), made on first use
        self.broker_reads: TokenBucket | None = None

    @property
    def topics(self) -> Set[str]:
        """Topics this client asked for (``"*"`` included as a word)."""
        return self._topics if self._topics is not None else NO_TOPICS

    def add_topic(self, topic: str) -> None:
        if self._topics is None:
            self._topics = set()
        self._topics.add(topic)

    def discard_topic(self, topic: str) -> bool:
        """Drop ``topic``; True when this client had it."""
        topics = self._topics
        if topics is None or topic not in topics:
            return False
        topics.discard(topic)
        if not topics:
            self._topics = None
        return True

    def strike(self, now: float) -> bool:
        """Record a rate-limit violation; True when it is one too many (close with 1008)."""
        if self._strikes is None:
            self._strikes = StrikeCounter(STRIKE_LIMIT, STRIKE_WINDOW)
        return self._strikes.strike(now)

    def pending_bytes(self) -> int:
        """Bytes queued for this client: in the outbox and in the transport's buffer."""
        return self.outbox_bytes + self.transport.get_write_buffer_size()

    def taken_bytes(self) -> int:
        """Bytes the kernel has taken for this client (a running total, meaningful as a
        difference between two moments while it lags): how fast it drains, apart from what
        is added to its queue meanwhile (outbox.py)."""
        return self.written - self.transport.get_write_buffer_size()
