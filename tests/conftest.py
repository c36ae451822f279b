"""Shared fixtures: a real gateway on a real socket (port 0), and helpers to talk to it.

End-to-end tests use python-websockets as an independent client, never the server's own
code, so a bug on both sides cannot cancel out.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import settings as hypothesis_settings

from wsgateway import Limits, Settings, create_app, get_gateway
from wsgateway.gateway import Gateway

# Property-based tests (test_protocol_fuzz.py) are reproducible by default: the same
# examples on every run and machine, no example database, no deadline on a loaded CI host.
# `pytest --hypothesis-profile=explore` searches with fresh random examples, 20x as many.
hypothesis_settings.register_profile(
    "wsgateway", max_examples=300, deadline=None, derandomize=True, database=None
)
hypothesis_settings.register_profile("explore", max_examples=6000, deadline=None)
hypothesis_settings.load_profile("wsgateway")


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


# -- errors the event loop only logs ----------------------------------------------------------
#
# An exception raised in a loop callback (the channel's flush, the hold retry, a timer), in a
# task nobody awaits, or a future whose exception is never retrieved does not reach the test:
# the loop hands it to its exception handler, whose default only logs it on the "asyncio"
# logger. Both asyncio's and uvloop's default handlers log there, so a handler on that logger
# sees these errors from every loop a test runs (pytest-asyncio's, pytest-aiohttp's, uvloop,
# a loop in a thread), and the fixture below turns each into a test failure.


class LoopErrorLog(logging.Handler):
    """Keeps every ERROR record of the "asyncio" logger until the fixture looks at it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records


LOOP_ERROR_LOG = LoopErrorLog()
logging.getLogger("asyncio").addHandler(LOOP_ERROR_LOG)


def describe(record: logging.LogRecord) -> str:
    """The record as the default handler would log it, traceback included."""
    return logging.Formatter("%(message)s").format(record)


def fail_on_loop_errors(item: pytest.Item, when: str) -> None:
    """Fail ``item`` when errors were logged, except those its marker allows."""
    records = LOOP_ERROR_LOG.take()
    marker = item.get_closest_marker("allow_loop_errors")
    if marker is not None:
        allowed = [re.compile(pattern) for pattern in marker.args]
        records = [
            record
            for record in records
            if allowed and not any(pattern.search(describe(record)) for pattern in allowed)
        ]
    if records:
        pytest.fail(
            f"the event loop reported {len(records)} error(s) {when} that the test never saw"
            " (mark it allow_loop_errors if they are expected):\n\n"
            + "\n\n".join(map(describe, records)),
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Errors logged while the test body ran fail the test itself, not only its teardown."""
    yield
    fail_on_loop_errors(item, "while it ran")


@pytest.fixture(autouse=True)
def loop_errors(request: pytest.FixtureRequest) -> Iterator[list[logging.LogRecord]]:
    """Fail the test when an event loop's exception handler reported an error during it.

    Errors logged while the test body runs fail the test (the ``pytest_runtest_call``
    wrapper above). This fixture is autouse, so it is set up before the test's event loop
    and torn down after that loop closed: errors logged by fixture teardown and by the
    loop's shutdown fail the test's teardown. A garbage collection of what the test
    allocated makes "Task was destroyed but it is pending" and "exception was never
    retrieved", reported only when the object is freed, show up in the test that leaked
    them. A test that provokes such an error on purpose opts out with
    ``@pytest.mark.allow_loop_errors("regex", ...)`` (no pattern: any error); the yielded
    list holds what was logged so far, for the test to assert on.
    """
    stray = LOOP_ERROR_LOG.take()
    if stray:  # after the previous test's check, e.g. by a session fixture's teardown
        pytest.fail(
            "the event loop reported errors between tests (before this one started):\n\n"
            + "\n\n".join(map(describe, stray)),
            pytrace=False,
        )
    # Objects older than the test cannot be what it leaked: frozen (O(1)), they are left out
    # of the collection at teardown, which then costs what the test allocated, not the
    # whole heap (a full collection of the suite's ~65k objects took ~40 ms per test).
    gc.freeze()
    try:
        yield LOOP_ERROR_LOG.records
        gc.collect()
    finally:
        gc.unfreeze()
    fail_on_loop_errors(request.node, "after it ran (teardown, loop shutdown, freed tasks)")


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


@pytest.fixture(params=["memory", "redis"])
async def gw_on_each_broker(
    request: pytest.FixtureRequest, start_gateway: StartGateway
) -> RunningGateway:
    """A gateway with default settings, once on the memory broker, once on a redis-server."""
    settings = Settings()
    if request.param == "redis":
        redis: Any = request.getfixturevalue("redis_server")
        settings = replace(settings, broker=redis.url)
    return await start_gateway(settings)


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


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[Any]:
    """A real redis-server on 127.0.0.1 (tests/redis_server.py), stopped after the test."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
