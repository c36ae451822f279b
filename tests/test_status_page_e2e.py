"""The status page at ``/``: one self-contained HTML file, live in a real headless Chromium.

The gateway runs in the test's event loop; Selenium blocks, so every browser call runs in a
worker thread (``asyncio.to_thread``) while the loop keeps serving the page's polls. The page
is read through its ``data-channel`` / ``data-field`` / ``data-value`` attributes, which hold
the raw figures behind the formatted text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
import websockets
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from wsgateway.brokers.memory import MemoryBroker

from .conftest import RunningGateway, StartGateway, recv_json, request

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Longest a change may take to show on the page (it polls every second).
WAIT = 10.0

T = TypeVar("T")
Snapshot = dict[str, Any]

#: What the page shows, read in one go: the status and broker pills, the alert, and for each
#: channel row (in page order) the raw value of every cell.
SNAPSHOT_JS = """
const byId = (id) => document.getElementById(id);
const rows = {};
for (const tr of document.querySelectorAll("#channel-rows tr[data-channel]")) {
  const cells = {};
  for (const td of tr.querySelectorAll("[data-field]")) cells[td.dataset.field] = td.dataset.value;
  cells.health = tr.dataset.health;
  rows[tr.dataset.channel] = cells;
}
const alert = byId("alert");
return {
  state: byId("status").dataset.state,
  body: document.body.dataset.state,
  broker: byId("broker").dataset.state,
  alert: alert.classList.contains("shown") ? alert.textContent : "",
  channels: Object.keys(rows),
  rows: rows,
  total_published_rate: byId("total-published-rate").dataset.value,
  title: document.title,
};
"""


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module; each test loads its own page."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"the status page tests need {path} (Debian packages chromium and "
                "chromium-driver; scripts/test installs them)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Given the driver's path, Selenium does not look for (or download) one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args)


async def open_page(browser: WebDriver, url: str) -> None:
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


@contextlib.asynccontextmanager
async def publishing(gw: RunningGateway, channel: str, every: float = 0.02) -> AsyncIterator[None]:
    """Publish to ``channel`` continuously while the block runs."""

    async def feed() -> None:
        n = 0
        while True:
            n += 1
            await gw.publish(channel, "BTC-USD", {"n": n})
            await asyncio.sleep(every)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- in the browser -------------------------------------------------------------------------


async def test_page_lists_every_channel_and_follows_publishes(
    gw: RunningGateway, browser: WebDriver
) -> None:
    channels = list(gw.gateway.channels)
    await open_page(browser, gw.http + "/")
    shown = await page_shows(browser, live, "live figures")
    assert shown["channels"] == channels  # every configured channel, in the gateway's order
    assert shown["broker"] == "connected" and shown["alert"] == ""
    for name in channels:
        row = shown["rows"][name]
        assert row["messages_published"] == "0" and row["active_connections"] == "0", name

    async with websockets.connect(gw.ws_url("ticker")) as ws:
        await request(ws, {"type": "subscribe", "topics": ["BTC-USD"], "id": 1})
        await page_shows(
            browser, lambda s: s["rows"]["ticker"]["active_connections"] == "1", "the subscriber"
        )
        for price in range(5):
            await gw.publish("ticker", "BTC-USD", {"price": price})
        for _ in range(5):
            assert (await recv_json(ws))["type"] == "update"
        api = (await gw.get_json("/api/ws/metrics"))["managers"]["ticker"]
        assert api["messages_published"] == 5

        shown = await page_shows(
            browser,
            lambda s: s["rows"]["ticker"]["messages_published"] == "5",
            "5 messages published on ticker",
        )
        ticker = shown["rows"]["ticker"]
        assert ticker["messages_sent"] == str(api["messages_sent"])
        assert ticker["total_connections"] == "1"
        assert ticker["success_rate"] == "1" and ticker["health"] == "ok"
        assert float(ticker["latency_p50"]) > 0 and float(ticker["latency_p99"]) > 0
        assert shown["rows"]["trades"]["messages_published"] == "0"

    # Rates are computed in the page from consecutive polls.
    async with publishing(gw, "trades"):
        shown = await page_shows(
            browser,
            lambda s: float(s["rows"]["trades"]["published_per_second"] or 0) > 0,
            "a publish rate on trades",
        )
    assert float(shown["total_published_rate"]) > 0
    assert shown["rows"]["market"]["published_per_second"] == "0"

    # Nothing came from anywhere but the gateway, and the script raised no error.
    resources: list[str] = await in_thread(
        browser.execute_script,
        "return performance.getEntriesByType('resource').map((e) => e.name);",
    )
    assert resources, "the page fetched nothing"
    assert all(url.startswith(gw.http + "/") for url in resources), resources
    assert await console_errors(browser) == []


async def test_page_flags_a_disconnected_broker(
    gw: RunningGateway, browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    await open_page(browser, gw.http + "/")
    await page_shows(browser, live, "live figures")
    monkeypatch.setattr(MemoryBroker, "connected", property(lambda self: False))
    shown = await page_shows(browser, lambda s: s["broker"] == "disconnected", "the broker down")
    assert "Broker disconnected" in shown["alert"]
    assert shown["body"] == "broker-down" and "BROKER DOWN" in shown["title"]
    monkeypatch.undo()
    shown = await page_shows(browser, lambda s: s["broker"] == "connected", "the broker back")
    assert shown["alert"] == "" and shown["body"] == "ok"
    assert await console_errors(browser) == []


async def test_page_says_when_the_gateway_is_unreachable(
    start_gateway: StartGateway, browser: WebDriver
) -> None:
    gw = await start_gateway()
    await open_page(browser, gw.http + "/")
    before = await page_shows(browser, live, "live figures")
    await gw.server.close()
    shown = await page_shows(
        browser, lambda s: s["state"] == "unreachable", "that the gateway is unreachable"
    )
    assert "Gateway unreachable" in shown["alert"] and "retrying" in shown["alert"]
    assert shown["body"] == "unreachable" and "UNREACHABLE" in shown["title"]
    assert shown["broker"] == "unknown"  # not "connected": nobody knows any more
    # The last counts stay (dimmed); rates are unknown without an answer.
    assert shown["channels"] == before["channels"]
    for name in shown["channels"]:
        row = shown["rows"][name]
        assert row["messages_published"] == before["rows"][name]["messages_published"], name
        assert row["published_per_second"] == row["sent_per_second"] == "", name


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
        ],
    }
