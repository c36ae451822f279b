"""A picows fan-out server: each client's ``WSTransport.send`` in a loop, as picows' own
broadcast example does.

Speaks the bench protocol (see ``wsgateway/loadgen/``): WebSocket clients on
``ws://127.0.0.1:PORT/ws/ticker``. picows serves only WebSocket upgrades, so publishers POST
to a small aiohttp endpoint on ``--publish-port`` in the same process and event loop, the
same aiohttp publish path every other server in the benchmark pays for.
"""

from __future__ import annotations

import json
from typing import Any

import uvloop
from aiohttp import web
from bench_protocol import announce, command_line, numbered_updates, serve_publish
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

subscribers: dict[str, set[WSTransport]] = {}
sequences: dict[str, int] = {}


class Client(WSListener):
    def __init__(self) -> None:
        self.topics: list[str] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.TEXT:
            request = json.loads(frame.get_payload_as_utf8_text())
            if request.get("type") == "subscribe":
                for topic in request["topics"]:
                    subscribers.setdefault(topic, set()).add(transport)
                    self.topics.append(topic)
                reply = {"type": "subscribed", "topics": request["topics"], "id": request.get("id")}
                transport.send(WSMsgType.TEXT, json.dumps(reply).encode())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for topic in self.topics:
            subscribers[topic].discard(transport)


def listener_factory(request: WSUpgradeRequest) -> Client | None:
    return Client() if request.path == b"/ws/ticker" else None  # None: 404


async def publish(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    for topic, update in numbered_updates(body, sequences):
        payload = json.dumps(update, separators=(",", ":")).encode()  # once per message
        for transport in subscribers.get(topic, ()):
            transport.send(WSMsgType.TEXT, payload)
    return web.json_response({"accepted": len(body["messages"])})


async def main(port: int, publish_port: int) -> None:
    publish_port = await serve_publish(publish, publish_port)
    server = await ws_create_server(listener_factory, "127.0.0.1", port)
    port = server.sockets[0].getsockname()[1]
    announce("picows", port, publish_port)
    await server.serve_forever()


if __name__ == "__main__":
    args = command_line(__doc__, 8083, separate_publish=True)
    uvloop.run(main(args.port, args.publish_port))
