"""The broker role: what the app needs from any broker, and the values it moves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """A message as a publisher hands it in: not yet numbered."""

    channel: str
    topic: str
    data: Any


@dataclass(frozen=True, slots=True)
class Update:
    """A numbered message: ``seq`` counts the messages of (channel, topic) without gaps."""

    channel: str
    topic: str
    seq: int
    ts: float
    data: Any


class Broker(Protocol):
    """Moves messages from publishers to every gateway process's relay loop."""

    @property
    def connected(self) -> bool:
        """True while messages can flow; the app reports it on /readyz and in metrics."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> int:
        """Number and send ``messages``; returns how many were accepted."""
        ...

    def batches(self) -> AsyncIterator[Sequence[Update]]:
        """The numbered messages, in batches, in publish order per topic."""
        ...
