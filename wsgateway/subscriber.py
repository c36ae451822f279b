"""``wsgateway subscribe``: the Python SDK (:mod:`wsgateway.client`) on one connection,
printing what it yields, one JSON line each, until ``--count`` updates, an interrupt, or the
gateway says no.

The lines: the gateway's ``subscribed`` replies (and ``heartbeat``, ``unsubscribed``
frames) as received, then the SDK's events in the shape of the frames they come from:
``update`` (with ``from_seq`` when conflated, ``replayed`` when resumed), ``snapshot``,
``reset``, and ``gap`` (updates lost for good, or ``"reason": "checksum"`` when the
client's copy of a book disagreed with the gateway's checksum and it took a fresh
snapshot). Duplicates are dropped and holes repaired, as any SDK client does.

It never hangs on a refusal and never reconnects (``reconnect=False``): a refused upgrade,
an ``error`` reply to the subscribe and a close by the gateway each end the command with
:class:`CommandFailed` (exit 1) carrying what the gateway said. Every close by the gateway
counts as a failure, 1001 (shutdown) and 1012 (drain) included: the command was asked to
keep receiving, and a script that runs it needs to know that the stream ended (to
reconnect, for instance).
"""

from __future__ import annotations

from typing import Any

import orjson

from .client import (
    Client,
    ClosedByGateway,
    ConnectFailed,
    ConnectRefused,
    Event,
    Gap,
    Reset,
    Snapshot,
    SubscribeRefused,
    Update,
)
from .errors import CommandFailed
from .urls import GatewayUrl

#: What the close codes mean (docs/protocol.md, "Close codes"), for the one-line message.
CLOSE_MEANINGS = {
    1000: "closed",
    1001: "the gateway shuts down",
    1002: "a WebSocket protocol error",
    1003: "a binary frame",
    1006: "the connection was lost",
    1007: "invalid UTF-8",
    1008: "policy violation or expired token",
    1009: "a frame over max_message_size",
    1011: "a server error",
    1012: "the node drains: reconnect",
    1013: "slow consumer",
}

#: Frames printed as received; the others come out as the SDK's events.
PRINTED_FRAMES = frozenset({"subscribed", "unsubscribed", "heartbeat"})


def describe_close(code: int | None, reason: str) -> str:
    """One line for a close by the gateway: code, its meaning, and the gateway's reason."""
    if code is None:
        return "the connection to the gateway was lost (no close frame)"
    meaning = CLOSE_MEANINGS.get(code, "")
    said = f": {reason}" if reason and reason != meaning else ""
    return f"the gateway closed the connection with {code}" + (
        f" ({meaning}){said}" if meaning else said
    )


def describe_error(frame: dict[str, object]) -> str:
    return f"the gateway answered the subscribe with {frame.get('code')}: {frame.get('message')}"


def event_line(channel: str, event: Event) -> dict[str, Any]:
    """An event as a JSON object shaped like the frame it came from."""
    line: dict[str, Any] = {"type": event.kind, "channel": channel, "topic": event.topic}
    if isinstance(event, Update | Snapshot):
        line.update(seq=event.seq, epoch=event.epoch, ts=event.ts)
        if isinstance(event, Update) and event.from_seq is not None:
            line["from_seq"] = event.from_seq
        if isinstance(event, Update) and event.replayed:
            line["replayed"] = True
        line["data"] = event.data
    elif isinstance(event, Reset):
        line.update(epoch=event.epoch, seq=event.seq)
    elif isinstance(event, Gap):
        epoch, seq = event.previous
        line.update(
            from_seq=event.from_seq,
            to_seq=event.to_seq,
            epoch=event.epoch,
            previous={"epoch": epoch, "seq": seq},
            reason=event.reason,
        )
    return line


def print_line(value: object) -> None:
    print(orjson.dumps(value).decode(), flush=True)


def print_frame(frame: dict[str, Any]) -> None:
    if frame.get("type") in PRINTED_FRAMES:
        print_line(frame)


async def subscribe(
    gateway: GatewayUrl,
    channel: str,
    topics: list[str],
    *,
    token: str | None,
    count: int,
    heartbeat: int | None = None,
    max_rate: float | None = None,
) -> None:
    """Subscribe and print until ``count`` updates and snapshots (0: until interrupted);
    raise :class:`CommandFailed` with the gateway's own words when it refuses or closes."""
    client = Client(
        gateway.base,
        channel,
        topics,
        token=token,
        reconnect=False,
        position_heartbeat=heartbeat,
        on_frame=print_frame,
        max_rate=max_rate,
    )
    received = 0
    try:
        async with client:
            async for event in client:
                print_line(event_line(channel, event))
                if isinstance(event, Update | Snapshot):
                    received += 1
                    if count and received >= count:
                        return
    except ConnectRefused as refused:
        said = f" {refused.error}: {refused.message}" if refused.error else ""
        raise CommandFailed(
            f"{refused.url} refused the connection: HTTP {refused.status}{said}"
        ) from None
    except SubscribeRefused as refused:
        raise CommandFailed(
            describe_error({"code": refused.code, "message": refused.message})
        ) from None
    except ClosedByGateway as closed:
        raise CommandFailed(describe_close(closed.code, closed.reason)) from None
    except ConnectFailed as failed:
        raise CommandFailed(str(failed)) from None
