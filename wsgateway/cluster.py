"""The cluster view: every gateway process's small stats record, shared through the broker.

Each process (each worker of each node) writes its :class:`NodeRecord` with
``broker.put_node`` every :data:`NODE_INTERVAL` seconds and reads everyone's with
``broker.nodes()``; ``/api/ws/metrics`` shows them as ``nodes``. A record whose
``last_seen`` is older than :data:`SILENT_INTERVALS` intervals drops out of the view (its
broker entry also expires then), so a process that died or lost the broker disappears
within about 6 s. ``last_seen`` is the writer's wall clock: nodes whose clocks disagree by
more than a few seconds look silent (or linger) by that much; NTP keeps that away.

The loop never stops the app: a broker that is down or slow costs one throttled log line
and a retry at the next interval, and the view keeps what it last read until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from .brokers import Broker
from .ratelimit import LogThrottle

log = logging.getLogger("wsgateway.cluster")

#: seconds between two records of one process
NODE_INTERVAL = 2.0
#: a node silent for this many intervals is gone from the view
SILENT_INTERVALS = 3
#: at most one log line per this many seconds about the broker refusing records
LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What one process tells the cluster about itself."""

    id: str
    address: str
    pid: int
    worker: int
    started: float
    connections: int
    sent: int
    last_seen: float

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeRecord:
        """Raises ValueError for anything but a record :meth:`to_bytes` wrote."""
        try:
            fields = orjson.loads(data)
            return cls(
                id=str(fields["id"]),
                address=str(fields["address"]),
                pid=int(fields["pid"]),
                worker=int(fields["worker"]),
                started=float(fields["started"]),
                connections=int(fields["connections"]),
                sent=int(fields["sent"]),
                last_seen=float(fields["last_seen"]),
            )
        except (TypeError, KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"not a node record: {exc!r}") from None

    def to_json(self, now: float) -> dict[str, Any]:
        view = asdict(self)
        view["uptime"] = round(max(0.0, now - self.started), 3)
        return view


def live_nodes(
    records: Mapping[str, bytes], now: float, interval: float = NODE_INTERVAL
) -> list[NodeRecord]:
    """The records of ``records`` heard from within :data:`SILENT_INTERVALS` intervals of
    ``now``, sorted by id; unreadable ones (another version's) are left out."""
    oldest = now - SILENT_INTERVALS * interval
    live = []
    for data in records.values():
        try:
            record = NodeRecord.from_bytes(data)
        except ValueError:
            continue
        if record.last_seen >= oldest:
            live.append(record)
    return sorted(live, key=lambda record: record.id)


def node_address(host: str, port: int) -> str:
    """``host:port`` as other nodes can tell it apart: a wildcard host (listening on every
    interface) is replaced by this machine's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_id(pid: int | None = None) -> str:
    """This process's id in the cluster: host name and pid (unique while it runs)."""
    return f"{socket.gethostname()}/{os.getpid() if pid is None else pid}"


class Cluster:
    """This process's record in the broker, and the records of every process."""

    def __init__(
        self,
        broker: Broker,
        figures: Callable[[], tuple[int, int]],
        *,
        address: str,
        worker: int = 0,
        interval: float = NODE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        #: (open connections, updates sent) of this process
        self.figures = figures
        #: host:port this process serves (see :meth:`listening_on`)
        self.address = address
        self.worker = worker
        self.interval = interval
        self.clock = clock
        self.id = node_id()
        self.pid = os.getpid()
        self.started = clock()
        self._records: Mapping[str, bytes] = {}
        self._wake = asyncio.Event()
        self._log_throttle = LogThrottle(LOG_INTERVAL)

    def record(self) -> NodeRecord:
        connections, sent = self.figures()
        return NodeRecord(
            self.id,
            self.address,
            self.pid,
            self.worker,
            self.started,
            connections,
            sent,
            self.clock(),
        )

    async def refresh(self) -> None:
        """Write this process's record and read everyone's. Raises what the broker raises."""
        async with asyncio.timeout(self.interval):
            await self.broker.put_node(
                self.id, self.record().to_bytes(), SILENT_INTERVALS * self.interval
            )
            self._records = await self.broker.nodes()

    def view(self) -> list[dict[str, Any]]:
        """The ``nodes`` section of ``/api/ws/metrics``: the live records, sorted by id."""
        now = self.clock()
        return [record.to_json(now) for record in live_nodes(self._records, now, self.interval)]

    async def run(self, app: Any = None) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: refresh every interval while the app runs."""
        task = asyncio.create_task(self._refresh_forever(), name="wsgateway-cluster")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def listening_on(self, address: str) -> None:
        """The process listens on ``address`` (host:port) now: tell the cluster at once."""
        self.address = address
        self._wake.set()

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh_or_log()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def refresh_or_log(self) -> bool:
        """:meth:`refresh`; False (and a throttled log line) when the broker failed."""
        try:
            await self.refresh()
        except Exception as exc:  # the view is best effort: the app goes on
            more = self._log_throttle.note("refresh", self.clock())
            if more is not None:
                log.warning(
                    "cannot exchange node records through the broker: %s%s",
                    type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                    more,
                )
            return False
        return True
