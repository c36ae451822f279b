"""The browser client ``/client.js`` and the ``/demo`` page in a real headless Chromium,
against real gateway processes: updates once and in order, connections cut mid-feed
(a TCP relay that aborts them, as a lost network does), a drained node left for another
on the same Redis, a resume past the history (a gap), a refused channel, and the demo
feed drawn live. Its pure parts (continuity, backoff, URLs) run in the same browser.

The page under test is the gateway's own ``/healthz`` (same origin, no CSP of its own):
each test imports ``/client.js`` into it and records what the client yields in
``window.log``, its state events in ``window.states`` and what stopped it in
``window.failure``. Selenium blocks, so every browser call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import aiohttp
import pytest
import websockets
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from wsgateway.book import Book, checksum, parse_delta
from wsgateway.settings import Settings
from wsgateway.web import DEMO_CSP

from .chromium import in_thread, module_browser
from .conftest import StartGateway
from .processes import GatewayNode, http_json
from .test_client_e2e import relay_to

pytestmark = pytest.mark.e2e

#: Longest a change may take to show in the browser.
WAIT = 12.0
TOPICS = ["BTC-USD", "ETH-USD"]
OPEN = ("--set", "connections_per_minute=100000")
#: Backoff for the tests: reconnects within half a second.
FAST = {"backoff": [0.05, 0.5]}


browser = module_browser(WAIT)  # one headless Chromium for the module


async def run_js(browser: WebDriver, script: str, *args: Any) -> Any:
    return await in_thread(browser.execute_script, script, *args)


async def open_page(browser: WebDriver, url: str) -> None:
    # Leave the previous page first: its client may still reconnect to a stopped node.
    await in_thread(browser.get, "about:blank")
    await in_thread(browser.get_log, "browser")  # forget what earlier tests logged
    await in_thread(browser.get, url)


START_CLIENT = """
const [url, channel, topics, options, done] = arguments;
window.log = []; window.states = []; window.failure = null;
import("/client.js").then(({ Client }) => {
  const client = new Client(url, channel, topics, options);
  window.client = client;
  client.addEventListener("state", (e) => window.states.push(
    { state: e.detail.state, code: e.detail.code ?? null, failures: e.detail.failures }));
  (async () => {
    try { for await (const event of client) window.log.push(event); }
    catch (error) {
      window.failure = { name: error.name, reason: error.reason, message: error.message };
    }
  })();
  done(true);
}, (error) => done(String(error)));
"""


async def start_client(
    browser: WebDriver, page: str, url: str, channel: str, topics: list[str], **options: Any
) -> None:
    """Open ``page`` (a gateway's /healthz) and start a Client recording into ``window``."""
    await open_page(browser, page)
    started = await in_thread(
        browser.execute_async_script, START_CLIENT, url, channel, topics, {**FAST, **options}
    )
    assert started is True, started


def _wait_for(browser: WebDriver, script: str, what: str) -> Any:
    seen: list[Any] = []

    def check(driver: WebDriver) -> Any:
        value = driver.execute_script(script)
        seen[:] = [value]
        return value

    try:
        return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(check)
    except TimeoutException:
        state = browser.execute_script("return [window.states, window.failure]")
        raise AssertionError(
            f"not reached within {WAIT}s: {what}; last seen {seen[-1] if seen else None}, "
            f"states and failure {state}"
        ) from None


async def wait_for(browser: WebDriver, script: str, what: str) -> Any:
    """Poll ``script`` in the page until it returns something truthy; returns it."""
    return await in_thread(_wait_for, browser, script, what)


async def subscribed(browser: WebDriver, topics: list[str], seq: int = 1) -> None:
    """Until the client holds ``seq`` of every topic (the subscribe was answered)."""
    check = " && ".join(f"window.client.position({t!r}).seq === {seq}" for t in topics)
    await wait_for(browser, f"return !!window.client && {check}", f"seq {seq} of {topics}")


async def reached(browser: WebDriver, topics: list[str], last: int) -> list[dict[str, Any]]:
    """Until the client yielded an update with seq ``last`` of every topic; the log."""
    script = (
        "const got = new Set(window.log.filter((e) => e.kind === 'update' && e.seq >= arguments[1])"
        ".map((e) => e.topic)); return arguments[0].every((t) => got.has(t)) && window.log;"
    )
    log: list[dict[str, Any]] = await in_thread(
        _wait_for_args, browser, script, (topics, last), f"seq {last} of {topics}"
    )
    return log


def _wait_for_args(browser: WebDriver, script: str, args: tuple[Any, ...], what: str) -> Any:
    try:
        return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(
            lambda driver: driver.execute_script(script, *args)
        )
    except TimeoutException:
        state = browser.execute_script("return [window.log.length, window.states, window.failure]")
        raise AssertionError(f"not reached within {WAIT}s: {what}; {state}") from None


async def publish(
    http: str, start: int, stop: int, channel: str = "trades", pause: float = 0.01
) -> None:
    """Messages start..stop-1 of every topic, in batches of 10 per topic."""
    async with aiohttp.ClientSession() as session:
        for first in range(start, stop, 10):
            batch = [
                {"channel": channel, "topic": topic, "data": {"n": n}}
                for n in range(first, min(first + 10, stop))
                for topic in TOPICS
            ]
            async with session.post(f"{http}/api/publish", json={"messages": batch}) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(pause)


def seqs(log: list[dict[str, Any]], topic: str) -> list[int]:
    return [e["seq"] for e in log if e["kind"] == "update" and e["topic"] == topic]


def opened(states: list[dict[str, Any]]) -> int:
    return sum(1 for s in states if s["state"] == "open")


# -- the module over real sockets --------------------------------------------------------


async def test_two_topics_receive_every_update_once_and_in_order(browser: WebDriver) -> None:
    total = 60
    with GatewayNode(*OPEN) as node:
        await publish(node.http, 0, 1)  # seq 1 of each topic: the client starts after it
        await start_client(browser, node.http + "/healthz", node.http, "trades", TOPICS)
        await subscribed(browser, TOPICS)
        await publish(node.http, 1, total)
        log = await reached(browser, TOPICS, total)
        states = await run_js(browser, "return window.states")
        await run_js(browser, "window.client.close()")
    assert [e for e in log if e["kind"] != "update"] == []
    for topic in TOPICS:
        assert seqs(log, topic) == list(range(2, total + 1)), topic
        updates = [e for e in log if e["topic"] == topic]
        assert [e["data"] for e in updates] == [{"n": n} for n in range(1, total)]
        assert not any(e["replayed"] for e in updates)
    assert opened(states) == 1


async def test_connections_cut_mid_feed_lose_nothing_and_repeat_nothing(
    browser: WebDriver,
) -> None:
    total = 300
    with GatewayNode(*OPEN, "--set", "history_size=2000") as node:
        await publish(node.http, 0, 1)
        async with relay_to(node.port) as relay:
            await start_client(browser, relay.url + "/healthz", relay.url, "trades", TOPICS)
            await subscribed(browser, TOPICS)
            feed = asyncio.create_task(publish(node.http, 1, total, pause=0.03))
            cuts = 0
            while not feed.done():
                await asyncio.sleep(0.3)
                cuts += relay.cut() > 0
            await feed
            log = await reached(browser, TOPICS, total)
            states = await run_js(browser, "return window.states")
            await run_js(browser, "window.client.close()")
    assert cuts >= 3
    assert opened(states) >= 3
    assert {s["code"] for s in states if s["state"] == "reconnecting"} == {1006}
    assert [e for e in log if e["kind"] != "update"] == []
    for topic in TOPICS:
        assert seqs(log, topic) == list(range(2, total + 1)), topic
    assert any(e["replayed"] for e in log)


async def test_a_drained_node_is_left_at_once_for_another_on_the_same_redis(
    browser: WebDriver, redis_server: Any
) -> None:
    total = 200
    broker = ("--set", f"broker={redis_server.url}", "--set", "drain_seconds=0.2")
    with GatewayNode(*OPEN, *broker) as first, GatewayNode(*OPEN, *broker) as second:
        await publish(second.http, 0, 1)
        async with relay_to(first.port) as relay:
            await start_client(browser, relay.url + "/healthz", relay.url, "trades", TOPICS)
            await subscribed(browser, TOPICS)
            feed = asyncio.create_task(publish(second.http, 1, total, pause=0.03))
            await wait_for(browser, "return window.log.length >= 20", "20 updates")
            relay.upstream = second.port  # the load balancer's next pick
            status, _ = await asyncio.to_thread(http_json, "POST", f"{first.http}/api/drain", {})
            assert status == 202
            assert not feed.done()  # the drain comes mid-feed
            await feed
            log = await reached(browser, TOPICS, total)
            states = await run_js(browser, "return window.states")
            await run_js(browser, "window.client.close()")
        assert first.wait(timeout=10) == 0
    ended = [s for s in states if s["state"] == "reconnecting"]
    assert [s["code"] for s in ended] == [1012]
    assert opened(states) == 2
    assert [e for e in log if e["kind"] != "update"] == []
    for topic in TOPICS:
        assert seqs(log, topic) == list(range(2, total + 1)), topic


async def test_updates_beyond_the_history_are_a_gap_and_the_stream_goes_on(
    browser: WebDriver,
) -> None:
    with GatewayNode(*OPEN, "--set", "history_size=10") as node:
        await publish(node.http, 0, 1)
        async with relay_to(node.port) as relay:
            await start_client(browser, relay.url + "/healthz", relay.url, "trades", TOPICS)
            await subscribed(browser, TOPICS)
            relay.upstream = None  # the network is gone: no connection gets through
            relay.cut()
            await wait_for(
                browser,
                "return window.states.filter((s) => s.state === 'reconnecting').length >= 2",
                "two failed attempts",
            )
            await publish(node.http, 1, 50)  # seq 2..50: 49 missed, 10 kept
            relay.upstream = node.port
            await subscribed(browser, TOPICS, 50)
            await publish(node.http, 50, 55)
            log = await reached(browser, TOPICS, 55)
            states = await run_js(browser, "return window.states")
            await run_js(browser, "window.client.close()")
    for topic in TOPICS:
        events = [e for e in log if e["topic"] == topic]
        gap, *updates = events
        assert gap["kind"] == "gap"
        assert (gap["from_seq"], gap["to_seq"]) == (2, 50)
        assert gap["previous"] == {"epoch": gap["epoch"], "seq": 1}
        assert [(e["kind"], e["seq"]) for e in updates] == [("update", s) for s in range(51, 56)]
    # Attempts refused before they opened count as failures until one opens again.
    assert max(s["failures"] for s in states) >= 1
    assert states[-1]["state"] == "open" and states[-1]["failures"] == 0


async def test_a_channel_that_never_opens_stops_the_client_after_max_failures(
    browser: WebDriver,
) -> None:
    """An unknown channel is refused with 404, which a browser sees as any failed connect
    (1006 before open): retried with backoff, then given up after ``maxFailures``."""
    with GatewayNode(*OPEN) as node:
        await start_client(
            browser, node.http + "/healthz", node.http, "nope", TOPICS, maxFailures=3
        )
        failure = await wait_for(browser, "return window.failure", "the client to stop")
        states = await run_js(browser, "return window.states")
    assert failure["name"] == "ClientStopped"
    assert failure["reason"] == "connect_failed"
    assert "3 attempts in a row never opened" in failure["message"]
    assert [s["state"] for s in states] == [
        "reconnecting",
        "connecting",
        "reconnecting",
        "connecting",
        "stopped",
    ]


# -- the pure parts, in the same browser --------------------------------------------------

PURE = """
const done = arguments[arguments.length - 1];
import("/client.js").then((m) => {
  const out = {};
  // Backoff: 0.5 doubling to 20, each plus a random fraction of itself.
  const b = new m.Backoff(0.5, 20, () => 0.5);
  out.backoff = Array.from({ length: 9 }, () => b.next());
  out.soon = b.soon();
  b.reset(); out.after_reset = b.next();
  // Close codes: at once, backoff, or stop.
  const c = new m.Backoff(1, 8, () => 0);
  out.close_1012 = m.afterClose(1012, "", c);
  out.close_1001 = m.afterClose(1001, "", c);
  out.close_1013 = m.afterClose(1013, "", c);
  out.close_1006 = m.afterClose(1006, "", c);
  for (const code of [1003, 1007, 1008, 1009]) {
    const stop = m.afterClose(code, "", c);
    out["close_" + code] = [stop.name, stop.reason, stop.code];
  }
  out.expired = m.afterClose(1008, "token expired", c).reason;
  out.error_rate = m.afterError("rate_limited", "", 2, ["A"], new m.Backoff(1, 8, () => 0));
  const refused = m.afterError("invalid_topic", "bad", null, ["A"], c);
  out.error_invalid = [refused.reason, refused.code, refused.topics];
  // URLs: any form of the gateway's address, the token in the query.
  out.urls = [
    m.channelUrl("", "ticker", null, "http://h:8080/demo"),
    m.channelUrl("https://h/prefix/", "ticker", "a b", undefined),
    m.channelUrl("ws://h:1/ws/trades", "ticker", null, undefined),
    m.channelUrl("http://h:1/api/publish", "user", "t", undefined),
  ];
  // Continuity.
  const s = new m.Streams(["A"]);
  const up = (seq, extra) => s.onUpdate({ type: "update", topic: "A", seq, data: seq, ...extra });
  out.subscribed = s.onSubscribed({ A: { seq: 4, epoch: "e1" } });
  out.next = up(5).map((e) => [e.kind, e.seq, e.epoch]);
  out.duplicate = up(5);
  out.hole = up(8);
  out.hole_again = up(9);  // the repair is on its way: wait for it
  out.since = s.since(["A"]);
  out.recovered = s.onSubscribed({ A: { seq: 9, epoch: "e1", recovered: true } });
  out.replayed = [up(6), up(7), up(8), up(9), up(10)].map((r) => r.map((e) => [e.seq, e.replayed]));
  out.lost = s.onSubscribed({ A: { seq: 20, epoch: "e1", recovered: false } });
  out.new_epoch = up(3, { epoch: "e2" }).map(
    (e) => [e.kind, e.from_seq ?? e.seq, e.to_seq ?? null, e.epoch]);
  out.reset = s.onReset({ type: "reset", topic: "A", epoch: "e3", seq: 0 }).map((e) => e.kind);
  out.first_of_epoch = up(1, { epoch: "e3" }).map((e) => [e.kind, e.seq]);
  out.position = s.position("A");
  out.last = s.last("A");
  const fresh = new m.Streams(["B"]);
  out.fresh = fresh.onSubscribed({ B: { seq: 0, epoch: "" } });
  out.fresh_first = fresh.onUpdate({ topic: "B", seq: 1, epoch: "x", data: 1 }).map(
    (e) => [e.kind, e.seq, e.epoch]);
  out.unknown_topic = s.onUpdate({ topic: "Z", seq: 1 });
  try { new m.Client("", "ticker", ["*"]); } catch (error) { out.star = error.name; }
  // Books: CRC32 and the checksum as wsgateway.book computes them; snapshots, conflated
  // updates, a checksum mismatch (a fresh hole), heartbeats.
  out.crc = [m.crc32(""), m.crc32("hello")];
  const book = new m.Book();
  book.apply({
    bids: [["100", "1"], ["99.5", "2"], ["100.25", "3"]],
    asks: [["101", "1"], ["1000", "2"], ["200", "0"]],
  });
  out.book = [book.bids(), book.asks(), book.checksum()];
  const k = new m.Streams(["K"]);
  k.onSubscribed({ K: { seq: 3, epoch: "e" } });
  const snap = { bids: [["100", "1"]], asks: [["101", "1"]] };
  snap.checksum = m.bookChecksum(snap.bids, snap.asks);
  out.snapshot = k.onSnapshot({ type: "snapshot", topic: "K", seq: 3, epoch: "e", data: snap })
    .map((e) => e.kind);
  const moved = m.bookChecksum([["100", "2"]], [["101", "1"]]);
  const bookUpdate = (seq, bids) => k.onUpdate({ topic: "K", seq, data: { bids } });
  out.conflated = k.onUpdate({
    topic: "K", seq: 6, from_seq: 4, data: { bids: [["100", "2"]], asks: [], checksum: moved },
  }).map((e) => [e.kind, e.seq, e.from_seq]);
  out.mismatch = k.onUpdate({ topic: "K", seq: 7, data: { bids: [["99", "1"]], checksum: 1 } });
  out.resync = [k.book("K"), k.since(["K"]), bookUpdate(8, [])];
  out.beat = [
    k.onHeartbeat({ topics: { K: { seq: 9, epoch: "e" } } }),  // resyncing: not a hole
    s.onHeartbeat({ topics: { A: { seq: 1, epoch: "e3" } } }),
    s.onHeartbeat({ topics: { A: { seq: 2, epoch: "e3" } } }),
  ];
  done(out);
}, (error) => done(String(error)));
"""


async def test_the_pure_parts_follow_the_python_sdk(browser: WebDriver) -> None:
    with GatewayNode(*OPEN) as node:
        await open_page(browser, node.http + "/healthz")
        out = await in_thread(browser.execute_async_script, PURE)
    assert isinstance(out, dict), out
    assert out["backoff"] == [0.75, 1.5, 3, 6, 12, 24, 30, 30, 30]
    assert out["soon"] == 0.25
    assert out["after_reset"] == 0.75
    assert (out["close_1012"], out["close_1001"]) == (0, 0)
    assert (out["close_1013"], out["close_1006"]) == (1, 2)
    for code in (1003, 1007, 1008, 1009):
        assert out[f"close_{code}"] == ["ClientStopped", "closed", code]
    assert out["expired"] == "token_expired"
    assert out["error_rate"] == 2
    assert out["error_invalid"] == ["subscribe_refused", "invalid_topic", ["A"]]
    assert out["urls"] == [
        "ws://h:8080/ws/ticker",
        "wss://h/prefix/ws/ticker?token=a%20b",
        "ws://h:1/ws/ticker",
        "ws://h:1/ws/user?token=t",
    ]
    assert out["subscribed"] == []
    assert out["next"] == [["update", 5, "e1"]]
    assert out["duplicate"] == []
    assert out["hole"] == {"hole": "A"}
    assert out["hole_again"] == []
    assert out["since"] == {"A": {"seq": 5, "epoch": "e1"}}
    assert out["recovered"] == []
    assert out["replayed"] == [[[6, True]], [[7, True]], [[8, True]], [[9, True]], [[10, False]]]
    assert out["lost"] == [
        {
            "kind": "gap",
            "topic": "A",
            "from_seq": 11,
            "to_seq": 20,
            "epoch": "e1",
            "previous": {"epoch": "e1", "seq": 10},
            "reason": "lost",
        }
    ]
    assert out["new_epoch"] == [["gap", 1, 2, "e2"], ["update", 3, None, "e2"]]
    assert out["reset"] == ["reset", "gap"]
    assert out["first_of_epoch"] == [["update", 1]]
    assert out["position"] == {"epoch": "e3", "seq": 1}
    assert out["last"] == 1
    assert out["fresh"] == []
    assert out["fresh_first"] == [["update", 1, "x"]]
    assert out["unknown_topic"] == []
    assert out["star"] == "TypeError"
    assert out["crc"] == [zlib.crc32(b""), zlib.crc32(b"hello")]
    levels = {
        "bids": [["100", "1"], ["99.5", "2"], ["100.25", "3"]],
        "asks": [["101", "1"], ["1000", "2"], ["200", "0"]],
    }
    book = Book()
    book.apply(parse_delta(levels))
    bids, asks = book.bids.levels(), book.asks.levels()
    assert out["book"] == [[list(b) for b in bids], [list(a) for a in asks], book.checksum()]
    assert out["snapshot"] == ["snapshot"]
    assert out["conflated"] == [["update", 6, 4]]
    gap = {"kind": "gap", "topic": "K", "from_seq": 7, "to_seq": 7, "epoch": "e"}
    assert out["mismatch"] == {
        "hole": "K",
        "fresh": True,
        "gap": {**gap, "previous": {"epoch": "e", "seq": 6}, "reason": "checksum"},
    }
    assert out["resync"] == [None, {}, []]
    assert out["beat"] == [[], [], [{"hole": "A"}]]


# -- the demo page ---------------------------------------------------------------------------

DEMO_STATE = """
const rows = {};
for (const tr of document.querySelectorAll("#ticker-rows tr[data-topic]")) {
  const cells = {};
  for (const td of tr.querySelectorAll("[data-field]")) {
    cells[td.dataset.field] = td.dataset.value ?? null;
  }
  rows[tr.dataset.topic] = cells;
}
return {
  ticker: document.getElementById("state-ticker").dataset.state,
  trades_state: document.getElementById("state-trades").dataset.state,
  ticker_text: document.getElementById("state-ticker").textContent,
  gaps: document.getElementById("gaps").dataset.value,
  rows: rows,
  trades: Array.from(
    document.querySelectorAll("#trade-rows tr"),
    (tr) => [tr.dataset.topic, Number(tr.dataset.seq)]),
};
"""


async def test_the_demo_page_shows_the_demo_feed_live(browser: WebDriver) -> None:
    with GatewayNode(*OPEN, "--demo") as node:
        await open_page(browser, node.http + "/demo")
        shown = await wait_for(
            browser,
            f"const s = (() => {{ {DEMO_STATE} }})();"
            "return s.ticker === 'open' && s.trades_state === 'open' && s.trades.length >= 12"
            " && Object.values(s.rows).every((r) => Number(r.seq) > 0) && s;",
            "every ticker row and a dozen trades",
        )
        assert set(shown["rows"]) == {"BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD"}
        first = {topic: int(row["seq"]) for topic, row in shown["rows"].items()}
        for row in shown["rows"].values():
            assert float(row["bid"]) < float(row["price"]) < float(row["ask"])
        assert shown["ticker_text"] == "ticker: connected"
        assert shown["gaps"] == "0"
        # The newest trade first: each symbol's seqs fall down the list.
        for topic in first:
            listed = [seq for name, seq in shown["trades"] if name == topic]
            assert listed == sorted(listed, reverse=True)
        # Live: the figures move on.
        await wait_for(
            browser,
            "const rows = document.querySelectorAll('#ticker-rows [data-field=seq]');"
            f"const first = {first};"
            "return Array.from(rows).every((td) => "
            "Number(td.dataset.value) > first[td.closest('tr').dataset.topic]);",
            "every symbol's ticker to move on",
        )
        errors = [
            entry["message"]
            for entry in await in_thread(browser.get_log, "browser")
            if entry["level"] == "SEVERE"
        ]
    assert errors == []  # no CSP refusal, no script error


BOOK_STATE = """
const section = document.getElementById("book");
const pill = document.getElementById("checksum");
const rows = (id) => Array.from(
  document.querySelectorAll(`#${id} tr`), (tr) => [tr.dataset.price, tr.dataset.qty]);
return {
  state: document.getElementById("state-orderbook").dataset.state,
  topic: section.dataset.topic ?? null, seq: Number(section.dataset.seq),
  epoch: section.dataset.epoch ?? null, checksum: Number(section.dataset.checksum),
  check: pill.dataset.state, verified: Number(pill.dataset.verified),
  mismatches: Number(pill.dataset.mismatches), gaps: document.getElementById("gaps").dataset.value,
  reconnects: Number(document.getElementById("resumes").dataset.value),
  bids: rows("bid-rows"), asks: rows("ask-rows"),
};
"""


async def book_shown(browser: WebDriver, condition: str, what: str) -> dict[str, Any]:
    shown: dict[str, Any] = await wait_for(
        browser, f"const b = (() => {{ {BOOK_STATE} }})(); return ({condition}) && b;", what
    )
    return shown


def assert_consistent(shown: dict[str, Any]) -> None:
    """Best bid below best ask, and the checksum the page shows is the one wsgateway.book
    computes from the levels it shows (the best 10 a side: the checksum's depth)."""
    bids = [tuple(level) for level in shown["bids"]]
    asks = [tuple(level) for level in shown["asks"]]
    assert len(bids) == len(asks) == 10, shown
    assert float(bids[0][0]) < float(asks[0][0]), shown
    assert [float(p) for p, _ in bids] == sorted((float(p) for p, _ in bids), reverse=True)
    assert [float(p) for p, _ in asks] == sorted(float(p) for p, _ in asks)
    assert shown["checksum"] == checksum(bids, asks)


async def server_checksum(node: GatewayNode, topic: str, epoch: str, seq: int) -> int:
    """The checksum the gateway sent with update ``seq`` of ``topic`` (replayed from its
    history by a subscribe with ``since``)."""
    url = f"ws://{node.address}/ws/orderbook"
    since = {topic: {"seq": seq - 1, "epoch": epoch}}
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": [topic], "since": since}))
        async with asyncio.timeout(WAIT):
            while True:
                frame = json.loads(await ws.recv())
                assert frame["type"] != "error", frame
                if frame["type"] == "subscribed":
                    assert frame["positions"][topic]["recovered"] is True, frame
                if frame["type"] == "update" and frame["seq"] == seq:
                    crc: int = frame["data"]["checksum"]
                    return crc


async def test_the_demo_page_keeps_a_checked_order_book_across_a_cut(
    browser: WebDriver,
) -> None:
    with GatewayNode(*OPEN, "--demo") as node:
        async with relay_to(node.port) as relay:
            await open_page(browser, relay.url + "/demo")
            ready = (
                "b.state === 'open' && b.check === 'ok' && b.verified >= 4 && b.bids.length === 10"
            )
            shown = await book_shown(browser, ready, "a checked book of 10 levels a side")
            assert shown["topic"] == "BTC-USD" and shown["mismatches"] == 0
            assert_consistent(shown)
            assert shown["checksum"] == await server_checksum(
                node, "BTC-USD", shown["epoch"], shown["seq"]
            )
            assert relay.cut() >= 1
            after = await book_shown(
                browser,
                f"b.reconnects >= 1 && b.state === 'open' && b.seq > {shown['seq']} + 4"
                f" && b.verified > {shown['verified']} + 4",
                "the book to go on after the cut",
            )
            assert after["check"] == "ok" and after["mismatches"] == 0, after
            assert after["gaps"] == "0"  # resumed with since: nothing lost
            assert_consistent(after)
            assert after["checksum"] == await server_checksum(
                node, "BTC-USD", after["epoch"], after["seq"]
            )
            errors = [
                entry["message"]
                for entry in await in_thread(browser.get_log, "browser")
                if entry["level"] == "SEVERE"
            ]
    assert errors == []


# -- plain HTTP --------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics_port", [None, 0])
async def test_client_js_and_demo_are_served_by_the_public_listener(
    start_gateway: StartGateway, metrics_port: int | None
) -> None:
    gw = await start_gateway(Settings(metrics_port=metrics_port))
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.http + "/client.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert response.headers["Cache-Control"] == "no-cache"
            assert "export class Client" in await response.text()
        async with session.get(gw.http + "/demo") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
            csp = response.headers["Content-Security-Policy"]
            assert csp == DEMO_CSP
            assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
            assert "frame-ancestors 'none'" in csp
            assert 'import { Client } from "/client.js"' in await response.text()
        async with session.post(gw.http + "/demo") as response:
            assert response.status == 405
