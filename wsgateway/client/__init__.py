"""``wsgateway.client``: the Python SDK. An asyncio client (on aiohttp) that connects with
backoff and jitter, subscribes, resumes with ``since`` after every disconnect, repairs
holes, keeps each topic's last value and order book (checked against the gateway's
checksums), and yields each update of its topics once, in order::

    from wsgateway.client import Client, Gap, Snapshot, Update

    async with Client("http://127.0.0.1:8080", "orderbook", ["BTC-USD"]) as client:
        async for event in client:
            if isinstance(event, (Snapshot, Update)):
                book = client.book(event.topic)  # bids()/asks() best first
            elif isinstance(event, Gap):
                ...  # updates lost for good: rebuild what depends on them

    events.py   the events (Update, Snapshot, Reset, Gap) and the exceptions that stop a client
    streams.py  per-topic continuity, last values and books: next, duplicate, hole, loss (pure)
    policy.py   backoff, and which refusals and closes are retried (pure)
    client.py   Client: the connection, its reconnects and resubscribes
"""

from __future__ import annotations

from .client import Client
from .events import (
    ClientStopped,
    ClosedByGateway,
    ConnectFailed,
    ConnectRefused,
    Event,
    Gap,
    Position,
    Reset,
    Snapshot,
    SubscribeRefused,
    TokenExpired,
    Update,
)

__all__ = [
    "Client",
    "ClientStopped",
    "ClosedByGateway",
    "ConnectFailed",
    "ConnectRefused",
    "Event",
    "Gap",
    "Position",
    "Reset",
    "Snapshot",
    "SubscribeRefused",
    "TokenExpired",
    "Update",
]
