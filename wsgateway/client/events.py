"""What a :class:`~wsgateway.client.Client` yields, and why it stops.

Every event is a small frozen dataclass with a ``kind`` (``"update"``, ``"snapshot"``,
``"reset"``, ``"gap"``), so a consumer can ``match event.kind`` or ``isinstance``, and a
later kind is one more class, not a change to these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import GatewayError

#: A topic's place in its stream: (epoch, seq) of the last update the client holds.
Position = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Update:
    """One update, in order: its ``seq`` is the previous one + 1 in ``epoch``.
    ``replayed``: it was published while the client was away and came from the gateway's
    history after a resume (``since``). ``from_seq``: set when the gateway conflated
    updates ``from_seq``..``seq`` of a ``last`` or ``book`` topic into this one (a slow
    reader, or ``max_rate``); ``data`` is then the newest value, or for a book the merged
    levels."""

    topic: str
    seq: int
    epoch: str
    ts: float
    data: Any
    replayed: bool = False
    from_seq: int | None = None
    kind: Literal["update"] = field(default="update", init=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole state of a ``last`` or ``book`` topic as of ``seq`` (the gateway sends one
    after a subscribe, and instead of a replay when a resume is not recovered). It replaces
    whatever the client held: for a book, ``data`` is the whole book (bids highest first,
    asks lowest first); the updates that follow continue from ``seq``."""

    topic: str
    seq: int
    epoch: str
    ts: float
    data: Any
    kind: Literal["snapshot"] = field(default="snapshot", init=False)


@dataclass(frozen=True, slots=True)
class Reset:
    """The gateway announced that the topic's numbering broke (a ``reset`` frame): the
    topic now stands at ``(epoch, seq)``, the next update is ``seq + 1``. When the client
    lost updates by it, a :class:`Gap` follows."""

    topic: str
    epoch: str
    seq: int
    kind: Literal["reset"] = field(default="reset", init=False)


@dataclass(frozen=True, slots=True)
class Gap:
    """Updates of ``topic`` lost for good: ``from_seq`` to ``to_seq`` of ``epoch`` (an empty
    range when ``to_seq < from_seq``). When ``epoch`` differs from ``previous``'s epoch, the
    updates after ``previous`` in the old epoch may be lost too (nobody can tell how many).
    The stream goes on from ``(epoch, to_seq)``; rebuild whatever was derived from it.

    ``reason``: ``"lost"``; or ``"checksum"``: the client's copy of a book disagreed with the
    checksum of update ``to_seq`` (``from_seq`` = ``to_seq``); the client takes a fresh
    snapshot, and a :class:`Snapshot` follows."""

    topic: str
    from_seq: int
    to_seq: int
    epoch: str
    previous: Position
    reason: Literal["lost", "checksum"] = "lost"
    kind: Literal["gap"] = field(default="gap", init=False)


#: Everything the iterator yields; a new kind joins this union.
Event = Update | Snapshot | Reset | Gap


class ClientStopped(GatewayError):
    """The client stopped for good: the gateway refused it in a way that retrying cannot
    change. Raised by the iterator; the client is closed."""


class ConnectRefused(ClientStopped):
    """The WebSocket upgrade was refused with an HTTP status that will not change (401, 403,
    404 ``unknown_channel``, 400). ``error`` is the gateway's code when its body was read."""

    def __init__(self, url: str, status: int, error: str, message: str) -> None:
        self.url, self.status, self.error, self.message = url, status, error, message
        said = f" {error}" + (f": {message}" if message else "") if error else ""
        super().__init__(f"{url} refused the connection: HTTP {status}{said}")


class SubscribeRefused(ClientStopped):
    """The gateway answered the subscribe with an ``error`` that resending cannot change
    (``invalid_topic``, ``forbidden_topic``, ``too_many_topics``...)."""

    def __init__(self, code: str, message: str, topics: tuple[str, ...]) -> None:
        self.code, self.message, self.topics = code, message, topics
        super().__init__(f"the gateway refused the subscribe to {list(topics)}: {code}: {message}")


class ClosedByGateway(ClientStopped):
    """The gateway closed the connection with a code that reconnecting would only repeat
    (1008 abuse, 1003/1007/1009: the client sent what the gateway never takes)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason
        super().__init__(
            f"the gateway closed the connection with {code}" + (f": {reason}" if reason else "")
        )


class TokenExpired(ClosedByGateway):
    """1008 ``token expired``: connect again with a fresh token."""


class ConnectFailed(ClientStopped):
    """The gateway could not be reached, or the connection was lost, and the client was made
    with ``reconnect=False`` (a tool that reports instead of retrying)."""

    def __init__(self, url: str, cause: str) -> None:
        self.url, self.cause = url, cause
        super().__init__(f"{url}: {cause}")
