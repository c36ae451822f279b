"""The settings of one run."""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("burst", "paced", "idle", "storm")
#: What each published message's data is: a stamped JSON object, or a book message (a
#: channel in mode ``book`` refuses anything else).
PAYLOADS = ("json", "book")


@dataclass
class Config:
    url: str
    publish_url: str
    clients: int
    scenario: str = "burst"
    topics: int = 1
    subs_per_client: int = 1
    zipf: float = 0.0
    rate: float = 50.0
    batch: int = 20
    inflight: int = 4
    pad: int = 60
    payload: str = "json"
    warmup: float = 2.0
    duration: float = 5.0
    slow_fraction: float = 0.0
    slow_rcvbuf: int = 4096
    concurrency: int = 64
    server_pid: int | None = None
    also_pids: tuple[int, ...] = ()  # more processes of the server (workers)
    redis_port: int | None = None  # the gateway's Redis on 127.0.0.1: its work per message
    sample_clients: int = 250
    progress: float = 1.0
    seed: int = 1
    channel: str = "ticker"
    quiet: bool = False
    label: str = ""
