"""Brokers move published messages between gateway processes.

A broker numbers each message per (channel, topic) and hands batches to the app's relay
loop; it knows nothing about sockets. ``create_broker(url)`` picks one by URL scheme.
"""

from __future__ import annotations

from ..errors import SettingsError
from .base import Broker, Message, Update
from .memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "Message", "Update", "create_broker"]


def create_broker(url: str) -> Broker:
    """The broker for ``url``: ``memory://`` (one process)."""
    if url.startswith("memory://"):
        return MemoryBroker()
    raise SettingsError("broker", url, "allowed: memory://")
