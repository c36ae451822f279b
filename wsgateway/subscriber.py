"""``wsgateway subscribe``: one WebSocket client printing what it receives, one JSON line per
frame, until ``--count`` updates, an interrupt, or the gateway says no.

It never hangs on a refusal: a refused upgrade, an ``error`` reply to the subscribe and a
close by the gateway each end the command with :class:`CommandFailed` (exit 1) carrying what
the gateway said. Every close by the gateway counts as a failure, 1001 (shutdown) and 1012
(drain) included: the command was asked to keep receiving, and a script that runs it needs
to know that the stream ended (to reconnect, for instance).
"""

from __future__ import annotations

import aiohttp
import orjson

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


async def subscribe(
    gateway: GatewayUrl, channel: str, topics: list[str], *, token: str | None, count: int
) -> None:
    """Subscribe and print until ``count`` updates (0: until interrupted); raise
    :class:`CommandFailed` with the gateway's own words when it refuses or closes."""
    url = gateway.ws(f"/ws/{channel}")  # without ?token=: it goes into messages

    async def refused_upgrade(response: aiohttp.ClientResponse) -> None:
        # Read before aiohttp drops the answer: its JSON body says why (web.py).
        if response.status >= 400:
            body = " ".join((await response.text(errors="replace")).split())
            raise CommandFailed(
                f"{url} refused the connection: HTTP {response.status} {body[:500]}"
            )

    params = {"token": token} if token else None
    updates = 0
    async with aiohttp.ClientSession(raise_for_status=refused_upgrade) as session:
        try:
            ws = await session.ws_connect(url, params=params)
        except aiohttp.WSServerHandshakeError as exc:
            raise CommandFailed(f"{url} refused the connection: HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
            raise CommandFailed(f"cannot reach {url}: {exc}") from None
        async with ws:
            request = {"type": "subscribe", "topics": topics, "id": 1}
            await ws.send_str(orjson.dumps(request).decode())
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.CLOSE:
                    raise CommandFailed(describe_close(message.data, message.extra or ""))
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise CommandFailed(describe_close(ws.close_code, ""))
                frame = orjson.loads(message.data)
                if frame.get("type") == "error":
                    raise CommandFailed(describe_error(frame))
                print(message.data, flush=True)
                if frame.get("type") == "update":
                    updates += 1
                    if count and updates >= count:
                        return
