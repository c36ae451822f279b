"""Readers that stop cannot pause the feed of everyone (issue 7, item 2).

There is one relay for all channels, and it waits while a client lags so that a burst slows
the publisher instead of cutting the readers. It used to wait for any lagging client for up
to ``slow_consumer_grace`` (2 s): every reader that stopped paused the feed of the whole
process for 2 s, and a few connections that stop reading one after another (reconnecting
is cheap) kept the feed at a fraction of its rate. Now the relay waits only for a client
that drains fast enough to catch up within its grace (outbox.py): a stopped reader costs
the feed one check interval, and is still cut.

Here a fast reader on a steady feed (1 KB messages published in a loop) must see no gap
longer than MAX_GAP while three stopped readers connect one after another and are cut.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import StartGateway, until
from .test_burst_e2e import Reader, Sequences, connect_stopped_reader

pytestmark = [pytest.mark.e2e, pytest.mark.attack]

STOPPED_READERS = 3
GRACE = 2.0
LIMIT = 262_144
#: The longest pause the fast reader may see: a stopped reader used to cost GRACE (2 s).
MAX_GAP = 0.5
MESSAGE = "x" * 1000
PER_POST = 4


class Gaps(Sequences):
    """Sequences that also notes the longest time between two updates, once ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.armed = False
        self.last_at: float | None = None
        self.max_gap = 0.0

    def see(self, message: Any) -> None:
        super().see(message)
        now = self.loop.time()
        if self.armed and self.last_at is not None:
            self.max_gap = max(self.max_gap, now - self.last_at)
        self.last_at = now


async def publish_steadily(url: str, stop: asyncio.Event) -> int:
    """POST PER_POST messages of 1 KB at a time until ``stop``; returns how many."""
    sent = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            body = orjson.dumps(
                {
                    "messages": [
                        {"channel": "trades", "topic": "FEED", "data": {"blob": MESSAGE}}
                        for _ in range(PER_POST)
                    ]
                }
            )
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200, await response.text()
            sent += PER_POST
    return sent


async def test_readers_that_stop_one_after_another_do_not_pause_the_feed(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway(max_outbox_bytes=LIMIT, slow_consumer_grace=GRACE)
    registry = gw.gateway.registry
    port = gw.server.port
    assert port is not None
    loop = asyncio.get_running_loop()

    def cut() -> float:
        value = registry.get_sample_value("wsgateway_slow_consumers_total", {"channel": "trades"})
        return value or 0.0

    fast = Reader(port, 0, None)
    gaps = Gaps()
    fast.seqs = gaps
    await loop.create_connection(lambda: fast, "127.0.0.1", port)
    await asyncio.wait_for(fast.subscribed, 10)
    stop = asyncio.Event()
    publisher = asyncio.create_task(publish_steadily(gw.http + "/api/publish", stop))
    stopped: list[socket.socket] = []
    try:
        await until(lambda: gaps.updates >= 100, 10)  # the feed runs
        gaps.armed = True
        for n in range(1, STOPPED_READERS + 1):
            stopped.append(await connect_stopped_reader(port))
            # Cut by the grace or, sooner, by the hard cap (2 x LIMIT pending).
            await until(lambda n=n: cut() == n, 4 * GRACE + 10)  # type: ignore[misc]
        received_during_attack = gaps.updates
        await until(lambda: gaps.updates >= received_during_attack + 100, 10)
        stop.set()
        sent = await asyncio.wait_for(publisher, 10)
    finally:
        stop.set()
        if not publisher.done():
            publisher.cancel()
        for sock in stopped:
            sock.close()
        if fast.transport is not None:
            fast.transport.close()

    # Every stopped reader was cut as a slow consumer, the fast one never, and it got every
    # update in order.
    assert cut() == STOPPED_READERS
    assert fast.close_code is None
    assert gaps.errors == []
    assert sent > 0
    print(f"max gap in the fast reader's feed: {gaps.max_gap:.3f} s ({gaps.updates} updates)")
    assert gaps.max_gap < MAX_GAP
