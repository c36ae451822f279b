"""The status page at ``/``: one self-contained HTML file, live in a real headless Chromium.

The gateway runs in the test's event loop (or as a real process, for the one that goes
away); Selenium blocks, so every browser call runs in a worker thread (``asyncio.to_thread``)
while the loop keeps serving the page's polls. The page is read through its ``id`` /
``data-channel`` / ``data-field`` / ``data-value`` attributes, which hold the raw figures
behind the formatted text, and through its text. Each scenario saves a screenshot (in the
test's tmp dir, or in ``$STATUS_PAGE_SCREENSHOTS`` when set: that is how docs/status-page.png
is made); the assertions are on the DOM, never on pixels.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from websockets.exceptions import ConnectionClosed

from wsgateway.brokers.memory import MemoryBroker
from wsgateway.metrics import histogram_quantile

from .chromium import in_thread, module_browser
from .conftest import RunningGateway, StartGateway, recv_json, request
from .processes import GatewayNode

pytestmark = pytest.mark.e2e

#: Longest a change may take to show on the page.
WAIT = 10.0
#: The page polls this often in most tests (``?interval=`` milliseconds).
FAST = "?interval=250"
#: What the page shows for a figure it does not know (yet).
UNKNOWN = "\N{EN DASH}"

Snapshot = dict[str, Any]

#: What the page shows, read in one go: the pills, the alert, the cards, the sparklines, each
#: channel row (in page order) with the raw value of every cell (and the lifetime figure of
#: the window's cells), the totals row, the broker/cluster block and the visible text.
SNAPSHOT_JS = """
const byId = (id) => document.getElementById(id);
const cellsOf = (tr) => {
  const cells = {};
  for (const td of tr.querySelectorAll("[data-field]")) {
    cells[td.dataset.field] = td.dataset.value;
    const lifetime = td.dataset.lifetime;
    if (lifetime !== undefined) cells[td.dataset.field + "_lifetime"] = lifetime;
  }
  cells.health = tr.dataset.health;
  return cells;
};
const rows = {};
for (const tr of document.querySelectorAll("#channel-rows tr[data-channel]")) {
  rows[tr.dataset.channel] = cellsOf(tr);
}
const nodes = [];
for (const tr of document.querySelectorAll("#node-rows tr[data-node]")) nodes.push(cellsOf(tr));
const cards = {};
for (const el of document.querySelectorAll(".cards [id]")) {
  if (el.dataset.value === undefined) continue;
  cards[el.id] = {value: el.dataset.value, text: el.textContent};
}
const sparks = {};
for (const svg of document.querySelectorAll("svg.spark")) {
  sparks[svg.id] = Number(svg.dataset.points);
}
const alert = byId("alert");
return {
  state: byId("status").dataset.state,
  status_text: byId("status").textContent,
  body: document.body.dataset.state,
  broker: byId("broker").dataset.state,
  alert: alert.classList.contains("shown") ? alert.textContent : "",
  window: byId("table-span-group").textContent,
  window_seconds: byId("table-span-group").dataset.seconds,
  channels: Object.keys(rows),
  rows: rows,
  totals: cellsOf(byId("totals-row")),
  cards: cards,
  sparks: sparks,
  nodes: nodes,
  broker_state: byId("broker-state").textContent,
  workers: byId("workers").textContent,
  uptime: byId("uptime").dataset.value,
  total_published_rate: byId("total-published-rate").dataset.value,
  text: document.body.innerText,
  title: document.title,
};
"""


# -- the browser ----------------------------------------------------------------------------


browser = module_browser(WAIT)  # one headless Chromium for the module


async def open_page(browser: WebDriver, url: str) -> None:
    # Leave the previous page first: it may still poll a gateway its test has stopped.
    await in_thread(browser.get, "about:blank")
    await in_thread(browser.get_log, "browser")  # forget what earlier tests logged
    await in_thread(browser.get, url)


def _wait(browser: WebDriver, condition: Callable[[Snapshot], bool], what: str) -> Snapshot:
    seen: list[Snapshot] = []

    def check(driver: WebDriver) -> Snapshot | bool:
        snapshot: Snapshot = driver.execute_script(SNAPSHOT_JS)
        seen[:] = [snapshot]
        return snapshot if condition(snapshot) else False

    try:
        result: Snapshot = WebDriverWait(browser, WAIT, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(
            f"the page did not show {what} within {WAIT}s; it showed {seen[-1] if seen else None}"
        ) from None
    return result


async def page_shows(
    browser: WebDriver, condition: Callable[[Snapshot], bool], what: str
) -> Snapshot:
    """Wait (bounded) until the page satisfies ``condition``; returns what it showed."""
    return await in_thread(_wait, browser, condition, what)


def live(snapshot: Snapshot) -> bool:
    return bool(snapshot["state"] == "ok" and snapshot["channels"])


async def console_errors(browser: WebDriver) -> list[str]:
    entries = await in_thread(browser.get_log, "browser")
    return [entry["message"] for entry in entries if entry["level"] == "SEVERE"]


def _screenshot(browser: WebDriver, path: Path) -> None:
    # The whole page, not only the window: Chromium's own full-page capture.
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


async def screenshot(browser: WebDriver, tmp_path: Path, name: str) -> Path:
    """Save the page as ``name``.png (in $STATUS_PAGE_SCREENSHOTS when set) and return it."""
    directory = Path(os.environ.get("STATUS_PAGE_SCREENSHOTS") or tmp_path)
    await in_thread(lambda: directory.mkdir(parents=True, exist_ok=True))
    path = directory / f"{name}.png"
    await in_thread(_screenshot, browser, path)
    assert path.stat().st_size > 10_000, path  # a page, not an empty image
    return path


def rate_known(value: str) -> bool:
    return value != "" and float(value) > 0


@contextlib.asynccontextmanager
async def publishing(
    gw: RunningGateway | GatewayNode,
    channel: str,
    every: float = 0.02,
    topics: tuple[str, ...] = ("BTC-USD",),
) -> AsyncIterator[None]:
    """Publish to ``channel`` continuously while the block runs (over HTTP to a process)."""

    async def feed() -> None:
        n = 0
        async with aiohttp.ClientSession() as session:
            while True:
                n += 1
                topic = topics[n % len(topics)]
                if isinstance(gw, GatewayNode):
                    body = {"channel": channel, "topic": topic, "data": {"n": n}}
                    try:
                        async with session.post(gw.http + "/api/publish", json=body) as response:
                            assert response.status == 200, await response.text()
                    except aiohttp.ClientConnectionError:
                        if gw.process.poll() is not None:
                            return  # the test stopped the process
                        raise
                else:
                    await gw.publish(channel, topic, {"n": n})
                await asyncio.sleep(every)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- in the browser -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def subscribers(url: str, topics: dict[str, list[str]]) -> AsyncIterator[list[int]]:
    """Real WebSocket clients subscribed to ``{channel: topics}`` (one client per topic list
    entry), reading everything; yields the count of updates they received."""
    clients = []
    received = [0]
    for channel, names in topics.items():
        for topic in names:
            ws = await websockets.connect(f"{url}/ws/{channel}")
            await request(ws, {"type": "subscribe", "topics": [topic], "id": 1})
            clients.append(ws)

    async def read(ws: websockets.ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _frame in ws:
                received[0] += 1

    readers = [asyncio.create_task(read(ws)) for ws in clients]
    try:
        yield received
    finally:
        for task in readers:
            task.cancel()
        for ws in clients:
            await ws.close()


async def test_page_lists_every_channel_and_follows_publishes(
    gw: RunningGateway, browser: WebDriver
) -> None:
    channels = list(gw.gateway.channels)
    await open_page(browser, gw.http + "/" + FAST)
    shown = await page_shows(browser, live, "live figures")
    assert shown["channels"] == channels  # every configured channel, in the gateway's order
    assert shown["broker"] == "connected" and shown["alert"] == ""
    for name in channels:
        row = shown["rows"][name]
        assert row["active_connections"] == "0" and row["slow_consumers_lifetime"] == "0", name

    async with websockets.connect(gw.ws_url("ticker")) as ws:
        await request(ws, {"type": "subscribe", "topics": ["BTC-USD", "ETH-USD"], "id": 1})
        shown = await page_shows(
            browser, lambda s: s["rows"]["ticker"]["subscriptions"] == "2", "the subscriptions"
        )
        assert shown["rows"]["ticker"]["active_connections"] == "1"
        assert shown["rows"]["ticker"]["topics"] == "2"
        assert shown["rows"]["ticker"]["mode"] == "last"  # the channel's topic mode
        assert shown["rows"]["orderbook"]["mode"] == "book"
        for price in range(5):
            await gw.publish("ticker", "BTC-USD", {"price": price})
        for _ in range(5):
            assert (await recv_json(ws))["type"] == "update"
        api = (await gw.get_json("/api/ws/metrics"))["managers"]["ticker"]
        assert api["messages_published"] == 5

        shown = await page_shows(
            browser,
            lambda s: s["rows"]["ticker"]["latency_p99"] != "",
            "the latency of the 5 updates on ticker",
        )
        ticker = shown["rows"]["ticker"]
        # The window's figures and, a toggle away, the same since start.
        assert ticker["success_rate"] == ticker["success_rate_lifetime"] == "1"
        assert ticker["health"] == "ok"
        for q in ("p50", "p90", "p99"):
            assert float(ticker[f"latency_{q}"]) > 0
            assert float(ticker[f"latency_{q}_lifetime"]) == pytest.approx(
                # the JSON view rounds to the microsecond (metrics._round); the page does not
                api["latency_seconds"][q],
                rel=1e-3,
                abs=1e-6,
            )
        assert shown["rows"]["trades"]["latency_p99"] == ""  # no delivery there
        assert shown["rows"]["trades"]["success_rate"] == ""

    # Rates are computed in the page from consecutive polls.
    async with publishing(gw, "trades"):
        shown = await page_shows(
            browser,
            lambda s: rate_known(s["rows"]["trades"]["published_per_second"]),
            "a publish rate on trades",
        )
    assert float(shown["total_published_rate"]) > 0
    assert shown["rows"]["market"]["published_per_second"] == "0"

    # A refused upgrade (plain HTTP on the WebSocket path): counted, with its reason.
    async with aiohttp.ClientSession() as session, session.get(gw.http + "/ws/ticker") as response:
        assert response.status == 400
    shown = await page_shows(
        browser, lambda s: s["rows"]["ticker"]["rejected"] == "1", "the rejection"
    )
    assert shown["cards"]["total-rejected"]["value"] == "1"
    assert shown["cards"]["total-rejected-reasons"]["text"] == "bad_handshake 1"
    assert re.search(r"\bticker\b.*\b1\s*bad_handshake 1\b", shown["text"]), shown["text"]

    # The toggle shows the figures since start in the table.
    await in_thread(browser.execute_script, "document.getElementById('span-toggle').click()")
    shown = await page_shows(browser, lambda s: s["window"] == "since start", "the lifetime")
    assert "Show the last minute" in shown["text"]

    # Nothing came from anywhere but the gateway, and the script raised no error.
    resources: list[str] = await in_thread(
        browser.execute_script,
        "return performance.getEntriesByType('resource').map((e) => e.name);",
    )
    assert resources, "the page fetched nothing"
    assert all(url.startswith(gw.http + "/") for url in resources), resources
    assert await console_errors(browser) == []


async def test_the_page_computes_quantiles_as_the_gateway_does(
    gw: RunningGateway, browser: WebDriver
) -> None:
    await open_page(browser, gw.http + "/" + FAST)
    await page_shows(browser, live, "live figures")
    cases = [
        [[0.001, 0], [0.01, 0], ["+Inf", 0]],  # nothing observed
        [[0.001, 3], [0.01, 3], ["+Inf", 3]],
        [[0.0001, 1], [0.00025, 2], [0.001, 10], [0.005, 11], ["+Inf", 11]],
        [[0.001, 1], [0.01, 1], ["+Inf", 100]],  # the rank in +Inf: the highest finite bound
        [[0.5, 0], [1.0, 7], [2.5, 9], [None, 10]],
    ]
    for q in (0.5, 0.9, 0.99):
        for buckets in cases:
            page = await in_thread(
                browser.execute_script,
                "const s = window.wsgatewayStatus;"
                "return s.histogramQuantile(arguments[0], s.parseBuckets(arguments[1]));",
                q,
                buckets,
            )
            finite = [(float("inf") if b in ("+Inf", None) else float(b), c) for b, c in buckets]
            python = histogram_quantile(q, finite)
            assert (page is None and python is None) or page == pytest.approx(python), (
                q,
                buckets,
            )


async def test_a_healthy_gateway_with_traffic(
    gw: RunningGateway, browser: WebDriver, tmp_path: Path
) -> None:
    topics = {"ticker": ["BTC-USD", "ETH-USD", "BTC-USD"], "trades": ["BTC-USD"]}
    async with subscribers(f"ws://127.0.0.1:{gw.server.port}", topics) as received:
        # A slow poll first: one answer is not enough for a rate or a window.
        await open_page(browser, gw.http + "/?interval=2000")
        first = await page_shows(browser, live, "live figures")
        assert first["cards"]["total-sent-rate"]["text"] == UNKNOWN
        assert (
            first["total_published_rate"] == "" and first["window"] == "waiting for a second poll"
        )
        assert first["cards"]["overall-success"]["text"] == UNKNOWN
        assert first["rows"]["ticker"]["sent_per_second"] == ""
        assert first["cards"]["total-active"]["value"] == "4"

        await open_page(browser, gw.http + "/" + FAST)
        async with (
            publishing(gw, "ticker", every=0.02, topics=("BTC-USD", "ETH-USD")),
            publishing(gw, "trades", every=0.05),
        ):
            shown = await page_shows(
                browser,
                lambda s: (
                    rate_known(s["cards"]["total-sent-rate"]["value"])
                    and s["cards"]["latency-p99"]["value"] != ""
                    and min(s["sparks"].values()) >= 3
                    and float(s["window_seconds"] or 0) >= 2
                    # the node's record is rewritten every 2 s
                    and [n["connections"] for n in s["nodes"]] == ["4"]
                ),
                "rates, latency, sparklines and the node",
            )
            await screenshot(browser, tmp_path, "status-healthy")
    assert received[0] > 0
    cards = shown["cards"]
    assert cards["total-active"]["value"] == "4"
    assert float(cards["total-sent-rate"]["value"]) > 0
    assert float(shown["total_published_rate"]) > 0
    assert cards["overall-success"]["text"] == "100%" and cards["overall-success"]["value"] == "1"
    for q in ("p50", "p90", "p99"):
        assert float(cards[f"latency-{q}"]["value"]) > 0, q
    assert float(cards["latency-p50"]["value"]) <= float(cards["latency-p99"]["value"])
    assert cards["total-slow"]["value"] == "0" and cards["total-rejected"]["value"] == "0"
    # The window is the page's own and says how long it is until a minute is known.
    assert re.fullmatch(r"last \d+ s", shown["window"]), shown["window"]
    assert f"All channels · {shown['window']}" in shown["text"]
    assert set(shown["sparks"]) == {"spark-connections", "spark-sent", "spark-p99"}
    ticker = shown["rows"]["ticker"]
    assert ticker["active_connections"] == "3" and ticker["subscriptions"] == "3"
    assert ticker["topics"] == "2"
    assert rate_known(ticker["sent_per_second"]) and rate_known(ticker["published_per_second"])
    assert shown["rows"]["trades"]["topics"] == "1"
    assert shown["totals"]["active_connections"] == "4"
    # The broker and the cluster: one process, its own node record.
    assert shown["broker_state"] == "connected" and shown["workers"] == "one process"
    assert len(shown["nodes"]) == 1
    assert shown["nodes"][0]["id"] and shown["nodes"][0]["connections"] == "4"
    assert shown["nodes"][0]["address"]  # (a TestServer does not tell the cluster its port)
    assert await console_errors(browser) == []


async def test_a_slow_consumer_shows(
    start_gateway: StartGateway, browser: WebDriver, tmp_path: Path
) -> None:
    # As in test_limits_e2e: over HOLD_BYTES, so a client whose kernel buffers are full is
    # held, then cut slow_consumer_grace after passing the limit.
    gw = await start_gateway(max_outbox_bytes=262144, slow_consumer_grace=0.5)
    await open_page(browser, gw.http + "/" + FAST)
    await page_shows(browser, lambda s: live(s) and s["window_seconds"] != "", "a window")
    slow = await websockets.connect(gw.ws_url("trades"), max_queue=1)
    try:
        await request(slow, {"type": "subscribe", "topics": ["BTC-USD"]})
        # websockets stops reading the socket once its queue is full: `slow` reads nothing.
        payload = {"blob": "x" * 8000}
        published = 0
        while gw.gateway.metrics_json()["managers"]["trades"]["slow_consumers"] == 0:
            assert published < 8000, "no slow consumer"
            await gw.gateway.publish_many(
                [{"channel": "trades", "topic": "BTC-USD", "data": payload}] * 4
            )
            published += 4
            await asyncio.sleep(0)
        shown = await page_shows(
            browser, lambda s: s["cards"]["total-slow"]["value"] == "1", "the slow consumer"
        )
        await screenshot(browser, tmp_path, "status-slow-consumer")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    finally:
        await slow.close()
    row = shown["rows"]["trades"]
    assert row["slow_consumers"] == "1" and row["slow_consumers_lifetime"] == "1"
    assert row["last_error"] == "slow_consumer"
    assert "slow_consumer" in shown["text"]
    assert "1 since start" in shown["cards"]["total-slow-lifetime"]["text"]
    # Frames failed for it: the window's success rate is below 100% and flagged.
    assert float(row["success_rate"]) < 1 and row["health"] == "bad"
    assert shown["totals"]["slow_consumers"] == "1"
    assert await console_errors(browser) == []


async def test_a_gateway_that_went_away(browser: WebDriver, tmp_path: Path) -> None:
    with GatewayNode() as node:
        port = node.port
        await open_page(browser, node.http + "/" + FAST)
        async with (
            subscribers(f"ws://127.0.0.1:{port}", {"ticker": ["BTC-USD", "ETH-USD"]}),
            publishing(node, "ticker", every=0.05, topics=("BTC-USD", "ETH-USD")),
        ):
            before = await page_shows(
                browser,
                lambda s: (
                    rate_known(s["cards"]["total-sent-rate"]["value"])
                    and s["cards"]["total-active"]["value"] == "2"
                    and float(s["window_seconds"] or 0) >= 2
                ),
                "live figures with traffic",
            )
            node.kill()  # the process is gone; its clients and the publisher see it too
            shown = await page_shows(
                browser, lambda s: s["state"] == "unreachable", "that the gateway is unreachable"
            )
            # ...and the page keeps asking.
            shown = await page_shows(
                browser, lambda s: "(1s)" in s["alert"] or "(2s)" in s["alert"], "for how long"
            )
            await screenshot(browser, tmp_path, "status-unreachable")
    assert re.search(r"Gateway unreachable since \S+", shown["alert"]), shown["alert"]
    assert "retrying every 0.25 s" in shown["alert"]
    assert "last known" in shown["alert"]
    assert shown["status_text"].startswith("unreachable since ")
    assert shown["body"] == "unreachable" and "UNREACHABLE" in shown["title"]
    assert shown["broker"] == "unknown"  # not "connected": nobody knows any more
    assert shown["broker_state"] == "unknown"
    # The last figures stay (greyed by the page's state), not blanked.
    assert shown["channels"] == before["channels"]
    assert shown["cards"]["total-active"]["value"] != ""
    assert shown["cards"]["total-sent-rate"]["value"] != ""
    assert shown["rows"]["ticker"]["topics"] == "2"
    assert len(shown["nodes"]) == 1

    # A gateway back on the same address: the page recovers by itself, and its window
    # starts again (the counters started again).
    with GatewayNode("--port", str(port)) as again:
        assert again.port == port
        back = await page_shows(browser, live, "the gateway back")
        assert back["alert"] == "" and back["body"] == "ok"
        assert float(back["uptime"]) < float(before["uptime"]) + 60
        assert back["cards"]["total-active"]["value"] == "0"
    logged = await console_errors(browser)
    assert all("api/ws/metrics" in line for line in logged), logged  # only the failed polls


async def test_a_node_of_two_workers(redis_server: Any, browser: WebDriver) -> None:
    with GatewayNode("--workers", "2", "--broker", redis_server.url) as node:
        await open_page(browser, node.http + "/" + FAST)
        shown = await page_shows(
            browser,
            lambda s: live(s) and len(s["nodes"]) == 2 and s["workers"] != "one process",
            "both workers of the node",
        )
    assert shown["workers"] == "2, all answering"
    assert shown["broker_state"] == "connected"
    assert sorted(n["worker"] for n in shown["nodes"]) == ["0", "1"]
    assert {n["address"] for n in shown["nodes"]} == {node.address}
    assert all(float(n["uptime"]) >= 0 and n["last_seen"] for n in shown["nodes"])


async def test_page_flags_a_disconnected_broker(
    gw: RunningGateway, browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    await open_page(browser, gw.http + "/" + FAST)
    await page_shows(browser, live, "live figures")
    monkeypatch.setattr(MemoryBroker, "connected", property(lambda self: False))
    shown = await page_shows(browser, lambda s: s["broker"] == "disconnected", "the broker down")
    assert "Broker disconnected" in shown["alert"]
    assert shown["body"] == "broker-down" and "BROKER DOWN" in shown["title"]
    assert shown["broker_state"] == "disconnected"
    monkeypatch.undo()
    shown = await page_shows(browser, lambda s: s["broker"] == "connected", "the broker back")
    assert shown["alert"] == "" and shown["body"] == "ok"
    assert await console_errors(browser) == []


# -- over plain HTTP --------------------------------------------------------------------------


async def test_root_is_a_self_contained_html_page(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as session, session.get(gw.http + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html" and response.charset == "utf-8"
        page = await response.text()
    assert page.lstrip().lower().startswith("<!doctype html>")
    # Nothing loaded from the internet: no absolute or protocol-relative URL anywhere, and
    # every src/href and CSS url() is inline data.
    assert re.findall(r"https?://\S+", page) == []
    references = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    references += re.findall(r"""url\(\s*["']?([^"')\s]*)""", page)
    assert all(ref.startswith("data:") for ref in references), references
    assert "@import" not in page
    assert "api/ws/metrics" in page  # what it polls


async def test_api_is_the_json_index(gw: RunningGateway) -> None:
    assert await gw.get_json("/api") == {
        "service": "wsgateway",
        "channels": {name: f"/ws/{name}" for name in gw.gateway.channels},
        "endpoints": [
            "/api/publish",
            "/api/drain",
            "/metrics",
            "/api/ws/metrics",
            "/healthz",
            "/readyz",
            "/client.js",
            "/demo",
        ],
    }
