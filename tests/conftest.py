"""Shared fixtures: a real gateway on a real socket (port 0), and helpers to talk to it.

End-to-end tests use python-websockets as an independent client, never the server's own
code, so a bug on both sides cannot cancel out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from aiohttp.test_utils import TestServer

from wsgateway import Limits, Settings, create_app, get_gateway
from wsgateway.gateway import Gateway


@dataclass
class RunningGateway:
    """A gateway serving on 127.0.0.1 with a free port."""

    server: TestServer
    app: web.Application

    @property
    def gateway(self) -> Gateway:
        return get_gateway(self.app)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def ws_url(self, channel: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws/{channel}{query}"

    async def publish(self, channel: str, topic: str, data: Any) -> None:
        await self.gateway.publish(channel, topic, data)

    async def get_json(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.http + path) as r:
            return await r.json()


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Start gateways with given settings/limits; all are shut down after the test."""
    servers: list[TestServer] = []

    async def start(settings: Settings | None = None, **limits: Any) -> RunningGateway:
        settings = settings or Settings()
        if limits:
            settings = replace(
                settings, defaults=replace(settings.defaults, **limits), overrides={}
            )
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return RunningGateway(server, app)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gw(start_gateway: StartGateway) -> RunningGateway:
    """A gateway with default settings."""
    return await start_gateway()


async def recv_json(ws: websockets.ClientConnection, timeout: float = 5.0) -> Any:
    """The next frame from the server, parsed."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def request(ws: websockets.ClientConnection, message: Any, timeout: float = 5.0) -> Any:
    """Send one frame (a dict is JSON-encoded; str/bytes are sent as they are), await the reply."""
    await ws.send(message if isinstance(message, str | bytes) else json.dumps(message))
    return await recv_json(ws, timeout)


async def wait_closed(ws: websockets.ClientConnection, timeout: float = 5.0) -> int | None:
    """Wait for the server to close ``ws``; returns the close code it sent."""
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a state change the test cannot await directly (polled every few ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


__all__ = ["Limits", "RunningGateway", "recv_json", "request", "until", "wait_closed"]
