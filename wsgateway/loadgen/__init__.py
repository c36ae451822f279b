"""A load generator for fan-out benchmarks: N WebSocket clients and an HTTP publisher.

``python -m wsgateway.loadgen --url ws://127.0.0.1:8080/ws/ticker --clients 1000`` opens the
clients, subscribes them, publishes through ``POST /api/publish`` and prints one JSON result
as the last line of stdout (progress goes to stderr). ``benchmarks/run.py`` drives it
against wsgateway and its peers; any server speaking the bench protocol works:

- a client sends ``{"type":"subscribe","topics":[...],"id":1}`` and waits for a frame
  containing ``"subscribed"``;
- a publisher POSTs ``{"messages":[{"channel","topic","data":{"t":<time.time()>,"pad":..}}]}``
  and every subscriber of the topic gets one text frame per message containing
  ``"type":"update"`` and the ``data`` object as it was published. ``--payload book``
  publishes book deltas instead, for a channel in mode ``book`` (issue 9), the stamp as the
  ask's quantity (``payload.py``).

The generator must never be the bottleneck, so a client is a bare ``asyncio.Protocol``
(its own upgrade handshake, masked client frames) that does not parse frames at all: it
counts the ``"update"`` marker in each chunk with ``bytes.count`` (C speed, with the few
bytes around a chunk boundary checked separately so a marker split in two is counted once)
and takes one latency sample per chunk from the first ``"t":`` in it. The first one is the
oldest message the chunk completes, so a chunk's sample is its worst latency, not its best.
The generator reports its own CPU use; a result counts only while it stays below 90% of
one core (``generator_saturated``).

Scenarios (mechanisms; the benchmark scenarios are built from them):

- ``burst``: closed loop. Batches of ``--batch`` messages are posted back to back while at
  most ``--inflight`` batches are still undelivered, so the server always has work but no
  queue grows without bound; measures the highest sustained delivery rate.
- ``paced``: open loop at ``--rate`` messages per second, one message per POST; measures
  publish-to-receive latency at a given load.
- ``idle``: connects the clients without subscribing and holds them; with ``--server-pid``
  it reports the server's RSS per connection.
- ``storm``: opens the clients as fast as ``--concurrency`` allows; handshakes per second.

``--slow-fraction`` makes that share of the clients stop reading once subscribed (a small
MSS and ``SO_RCVBUF`` make their backlog reach the server within seconds). ``--server-pid``
adds the server's CPU seconds and RSS over the measured window, read from ``/proc`` (Linux),
and the CPU other processes used meanwhile (``background_cpu``, in cores).
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
