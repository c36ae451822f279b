"""A worker's private metrics socket, and the node's metrics read through its siblings'.

With ``wsgateway serve --workers N`` the supervisor (``workers.py``) makes a private
runtime directory (mode 0700); worker ``i`` serves its own registry there, on
``worker-<i>.sock``, to whoever connects (the answer is :func:`workermetrics.to_wire`, then
the socket closes: no request, no HTTP). A scrape of any worker reads every sibling's
socket concurrently and merges the figures (``workermetrics.merge``). A sibling that does
not answer within :data:`SIBLING_TIMEOUT` (restarting, or its loop stalled) is left out of
that scrape, and ``wsgateway_worker_up{worker="<i>"}`` is 0: the scrape is late by at
most that long, never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .ratelimit import LogThrottle
from .workermetrics import MergedCollector, from_wire, merge, to_wire, with_worker

log = logging.getLogger("wsgateway.siblings")

#: seconds a scrape waits for a sibling's figures (Prometheus' scrape_timeout is 10 s)
SIBLING_TIMEOUT = 2.0
#: at most one log line per sibling per this many seconds about a sibling not answering
LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Which worker this process is, of how many, and where their private sockets live."""

    index: int
    count: int
    runtime_dir: str

    def socket_path(self, index: int) -> Path:
        return Path(self.runtime_dir) / f"worker-{index}.sock"


class Siblings:
    """This worker's registry on its private socket; the node's figures on demand."""

    def __init__(
        self, role: WorkerRole, registry: Collector, timeout: float = SIBLING_TIMEOUT
    ) -> None:
        self.role = role
        self.registry = registry
        self.timeout = timeout
        self._log_throttle = LogThrottle(LOG_INTERVAL)

    async def serve(self, app: Any = None) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: serve this worker's registry on its private socket."""
        path = self.role.socket_path(self.role.index)
        path.unlink(missing_ok=True)  # left by this worker's previous life, if it crashed
        server = await asyncio.start_unix_server(self._answer, path=str(path))
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()
            path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(to_wire(self.registry))
            await writer.drain()
        except OSError:
            pass  # the asking sibling gave up (its timeout) or is gone
        finally:
            writer.close()

    async def node_registry(self) -> Collector:
        """Every worker's series, each labelled ``worker``, this one's read in place."""
        role = self.role
        others = [i for i in range(role.count) if i != role.index]
        answers = await asyncio.gather(*(self._read(i) for i in others))
        parts: dict[str, list[Metric] | None] = {}
        for index in range(role.count):
            if index == role.index:
                parts[str(index)] = with_worker(self.registry.collect(), str(index))
            else:
                parts[str(index)] = answers[others.index(index)]
        return MergedCollector(merge(parts))

    async def _read(self, index: int) -> list[Metric] | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(
                    str(self.role.socket_path(index))
                )
                return from_wire(await reader.read(), str(index))
        except (OSError, TimeoutError, ValueError) as exc:
            more = self._log_throttle.note(str(index), time.monotonic())
            if more is not None:
                log.warning(
                    "worker %d's metrics are missing from this scrape: %s%s",
                    index,
                    type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                    more,
                )
            return None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
