"""The HTTP publisher: ``POST /api/publish`` closed loop (burst) or open loop (paced)."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import orjson

from .client import Stats
from .config import Config
from .fleet import topic_names
from .payload import book_data, json_data

#: Burst: seconds to wait for a batch's deliveries before writing them off as lost.
STALL_TIMEOUT = 2.0
#: Paced: requests in flight at most; past it, ticks are skipped (and counted).
MAX_PENDING_POSTS = 256


class Publisher:
    """Posts messages to the server; knows how many deliveries each should produce."""

    def __init__(self, cfg: Config, session: aiohttp.ClientSession, fanout: dict[str, int]):
        self.cfg = cfg
        self.session = session
        self.fanout = fanout
        # Round-robin over the topics that have readers: each symbol ticks at the same rate,
        # popularity shows in how many clients hold it.
        self.topics = itertools.cycle(sorted(fanout) or topic_names(cfg.topics))
        self.pad = "x" * cfg.pad
        self.book = cfg.payload == "book"
        self.books = 0  # book deltas built so far: the next one's level
        self.messages = 0  # messages posted while measuring
        self.counting = False
        self.errors = 0
        self.stalls = 0
        self.skipped = 0

    def body(self, count: int) -> tuple[bytes, int]:
        """A publish body of ``count`` messages stamped now, and its expected deliveries."""
        stamp = time.time()
        channel = self.cfg.channel
        topics = [next(self.topics) for _ in range(count)]
        if self.book:
            first, self.books = self.books, self.books + count
            datas = [book_data(first + i, stamp) for i in range(count)]
        else:
            datas = [json_data(stamp, self.pad)] * count
        messages = [
            {"channel": channel, "topic": topic, "data": data}
            for topic, data in zip(topics, datas, strict=True)
        ]
        return orjson.dumps({"messages": messages}), sum(self.fanout.get(t, 0) for t in topics)

    async def post(self, body: bytes, count: int) -> None:
        if self.counting:
            self.messages += count
        try:
            async with self.session.post(
                self.cfg.publish_url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                if response.status != 200:
                    self.errors += 1
        except aiohttp.ClientError:
            self.errors += 1

    async def burst(self, stats: Stats) -> None:
        cfg = self.cfg
        expected = written_off = 0
        per_batch = cfg.batch * sum(self.fanout.values()) / max(1, len(self.fanout))
        window = int((cfg.inflight - 1) * per_batch)
        while True:
            target = expected - written_off - window
            if stats.delivered < target:
                try:
                    async with asyncio.timeout(STALL_TIMEOUT):
                        await stats.wait_delivered(target)
                except TimeoutError:
                    # Deliveries that never come (a client dropped) must not stop the loop.
                    self.stalls += 1
                    written_off = expected - stats.delivered - window
            body, deliveries = self.body(cfg.batch)
            expected += deliveries
            await self.post(body, cfg.batch)

    async def paced(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.cfg.rate
        pending: set[asyncio.Task[None]] = set()
        due = loop.time()
        try:
            while True:
                due += interval
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= MAX_PENDING_POSTS:  # the server is far behind: say so
                    self.skipped += 1
                    continue
                body, _ = self.body(1)
                task = loop.create_task(self.post(body, 1))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            # Requests still open when the run ends are abandoned, not failed.
            for task in pending:
                task.cancel()
