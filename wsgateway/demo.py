"""A synthetic market feed for ``wsgateway serve --demo``: data and metrics move at once.

A random walk per symbol drives ticker, trades, an order book and a market summary, a few
updates per second each, published through the same path as real publishers. The order
book is a real one (a ``book`` topic): each symbol first publishes a whole book
(``"snapshot": true``, :data:`DEPTH` levels a side around the walk's price), then level
changes with absolute quantities (qty 0 removes a level) that keep it consistent: the best
bid stays below the best ask as the price moves, and each side stays about :data:`DEPTH`
levels deep. Ticker and market are last values; trades a stream.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("wsgateway.demo")

SYMBOLS = {"BTC-USD": 65_000.0, "ETH-USD": 3_400.0, "SOL-USD": 150.0, "DOGE-USD": 0.15}
TICK_SECONDS = 0.25  # four rounds per second
#: levels a side the demo book keeps (a level beyond DEPTH + 5 from the best is removed)
DEPTH = 15


def tick_size(price: float) -> Decimal:
    """A price step of about 1/2,000 of ``price`` (the walk moves a tick or two a round),
    rounded down to 1, 2 or 5 times a power of ten: 65000 → 20, 3400 → 1, 150 → 0.05,
    0.15 → 0.00005."""
    raw = price / 2_000
    power = math.floor(math.log10(raw))
    for step in (5, 2, 1):
        if step * 10**power <= raw:
            return Decimal(step).scaleb(power)
    return Decimal(1).scaleb(power)  # pragma: no cover - 10^power <= raw always


class DemoBook:
    """One symbol's book in whole ticks: ``bids``/``asks`` map a tick index to a qty."""

    def __init__(self, price: float, rng: random.Random) -> None:
        self.tick = tick_size(price)
        self.rng = rng
        self.bids: dict[int, str] = {}
        self.asks: dict[int, str] = {}

    def price_text(self, index: int) -> str:
        return format(self.tick * index, "f")

    def qty(self) -> str:
        return f"{self.rng.expovariate(1) + 0.001:.3f}"

    def snapshot(self, price: float) -> dict[str, Any]:
        """The whole book around ``price``: ``{"snapshot": true, "bids", "asks"}``."""
        mid = self._mid(price)
        self.bids = {mid - 1 - i: self.qty() for i in range(DEPTH)}
        self.asks = {mid + 1 + i: self.qty() for i in range(DEPTH)}
        return {
            "snapshot": True,
            "bids": [[self.price_text(i), q] for i, q in sorted(self.bids.items(), reverse=True)],
            "asks": [[self.price_text(i), q] for i, q in sorted(self.asks.items())],
        }

    def move(self, price: float) -> dict[str, Any]:
        """The level changes that follow the price to ``price``: levels the new price
        crosses go, the side it moved away from is filled up to the new best, the far ends
        are trimmed, and a few levels change their qty."""
        mid = self._mid(price)
        bids: dict[int, str] = {}
        asks: dict[int, str] = {}
        for index in [i for i in self.bids if i >= mid]:  # crossed: the best bid stays < mid
            bids[index] = "0"
        for index in [i for i in self.asks if i <= mid]:
            asks[index] = "0"
        for i in range(DEPTH):  # fill from the best outwards, sparsely
            if mid - 1 - i not in self.bids and self.rng.random() < 0.85:
                bids[mid - 1 - i] = self.qty()
            if mid + 1 + i not in self.asks and self.rng.random() < 0.85:
                asks[mid + 1 + i] = self.qty()
        for index in [i for i in self.bids if i < mid - DEPTH - 5]:
            bids[index] = "0"
        for index in [i for i in self.asks if i > mid + DEPTH + 5]:
            asks[index] = "0"
        for side, changes in ((self.bids, bids), (self.asks, asks)):
            for index in self.rng.sample(sorted(side), min(2, len(side))):
                if index not in changes:
                    changes[index] = self.qty()
        for side, changes, best in ((self.bids, bids, mid - 1), (self.asks, asks, mid + 1)):
            for index, qty in changes.items():
                if qty == "0":
                    side.pop(index, None)
                else:
                    side[index] = qty
            if not side:  # never an empty side: the ticker quotes both
                side[best] = changes[best] = self.qty()
        return {
            "bids": [[self.price_text(i), q] for i, q in sorted(bids.items(), reverse=True)],
            "asks": [[self.price_text(i), q] for i, q in sorted(asks.items())],
        }

    def best(self) -> tuple[float, float]:
        """(best bid, best ask) as numbers, for the ticker."""
        return float(self.tick * max(self.bids)), float(self.tick * min(self.asks))

    def _mid(self, price: float) -> int:
        return round(Decimal(repr(price)) / self.tick)


def demo_round(
    prices: dict[str, float], books: dict[str, DemoBook], rng: random.Random
) -> list[dict[str, Any]]:
    """One round of messages for the demo channels; moves ``prices`` and ``books`` (a
    symbol without a book yet gets one and publishes its snapshot)."""
    messages: list[dict[str, Any]] = []
    for symbol, price in prices.items():
        price = max(price * (1 + rng.gauss(0, 0.0008)), 0.0001)
        prices[symbol] = price
        book = books.get(symbol)
        if book is None:
            book = books[symbol] = DemoBook(price, rng)
            levels = book.snapshot(price)
        else:
            levels = book.move(price)
        bid, ask = book.best()
        messages.append(
            {
                "channel": "ticker",
                "topic": symbol,
                "data": {"price": round(price, 6), "bid": bid, "ask": ask},
            }
        )
        messages.append(
            {
                "channel": "trades",
                "topic": symbol,
                "data": {
                    "price": round(price, 6),
                    "size": round(rng.expovariate(2), 4),
                    "side": rng.choice(("buy", "sell")),
                },
            }
        )
        messages.append({"channel": "orderbook", "topic": symbol, "data": levels})
    return messages


async def run_demo(gateway: Gateway, *, seed: int | None = None) -> None:
    """Publish the synthetic feed until cancelled."""
    rng = random.Random(seed)
    prices = dict(SYMBOLS)
    books: dict[str, DemoBook] = {}
    configured = set(gateway.settings.channels)
    rounds = 0
    log.info(
        "demo feed on: %s for %s",
        ", ".join(sorted(configured & {"ticker", "trades", "orderbook", "market"})),
        ", ".join(SYMBOLS),
    )
    while True:
        messages = [m for m in demo_round(prices, books, rng) if m["channel"] in configured]
        rounds += 1
        if rounds % 4 == 0 and "market" in configured:
            messages.append(
                {
                    "channel": "market",
                    "topic": "summary",
                    "data": {s: round(p, 6) for s, p in prices.items()},
                }
            )
        if messages:
            try:
                await gateway.publish_many(messages)
            except Exception:
                log.exception("demo publish failed")
                books.clear()  # lost or not: start the books over with snapshots
        await asyncio.sleep(TICK_SECONDS)
