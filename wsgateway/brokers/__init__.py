"""Brokers move published messages between gateway processes.

A broker numbers each message per (channel, topic), keeps each topic's recent history and
hands batches to the app's relay loop; it knows nothing about sockets.
``create_broker(settings)`` picks one by the URL scheme of ``settings.broker``.
"""

from __future__ import annotations

from ..errors import SettingsError
from ..settings import Settings
from .base import (
    NO_POSITION,
    RESYNC,
    Broker,
    BrokerStats,
    History,
    HistoryPolicy,
    Message,
    Position,
    Resync,
    Snapshot,
    Update,
)
from .memory import MemoryBroker

__all__ = [
    "NO_POSITION",
    "RESYNC",
    "Broker",
    "BrokerStats",
    "History",
    "HistoryPolicy",
    "MemoryBroker",
    "Message",
    "Position",
    "Resync",
    "Snapshot",
    "Update",
    "create_broker",
    "history_policies",
]


def history_policies(settings: Settings) -> dict[str, HistoryPolicy]:
    """What each channel's topics keep, from the channel's limits."""
    policies = {}
    for name in settings.channels:
        limits = settings.limits_for(name)
        policies[name] = HistoryPolicy(
            limits.history_size,
            limits.history_ttl,
            limits.topic_ttl,
            limits.mode_for(name),
            limits.max_book_levels,
            limits.checksum,
        )
    return policies


def create_broker(settings: Settings) -> Broker:
    """The broker for ``settings.broker``: ``memory://`` (one process) or ``redis://``."""
    url = settings.broker
    policies = history_policies(settings)
    if url.startswith("memory://"):
        return MemoryBroker(policies)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisBroker  # redis-py is only imported when it is used

        return RedisBroker(url, policies)
    raise SettingsError("broker", url, "allowed: memory://, redis://, rediss://, unix://")
