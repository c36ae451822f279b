"""A synthetic market feed for ``wsgateway serve --demo``: data and metrics move at once.

A random walk per symbol drives ticker, trades, order-book deltas and a market summary,
a few updates per second each, published through the same path as real publishers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("wsgateway.demo")

SYMBOLS = {"BTC-USD": 65_000.0, "ETH-USD": 3_400.0, "SOL-USD": 150.0, "DOGE-USD": 0.15}
TICK_SECONDS = 0.25  # four rounds per second


def demo_round(prices: dict[str, float], rng: random.Random) -> list[dict[str, Any]]:
    """One round of messages for the configured demo channels; moves ``prices``."""
    messages: list[dict[str, Any]] = []
    for symbol, price in prices.items():
        price = max(price * (1 + rng.gauss(0, 0.0008)), 0.0001)
        prices[symbol] = price
        spread = price * 0.0002
        bid, ask = round(price - spread, 6), round(price + spread, 6)
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
        side = rng.choice(("bids", "asks"))
        level = (
            bid - spread * rng.randint(0, 5) if side == "bids" else ask + spread * rng.randint(0, 5)
        )
        messages.append(
            {
                "channel": "orderbook",
                "topic": symbol,
                "data": {side: [[round(level, 6), round(rng.expovariate(1), 4)]]},
            }
        )
    return messages


async def run_demo(gateway: Gateway, *, seed: int | None = None) -> None:
    """Publish the synthetic feed until cancelled."""
    rng = random.Random(seed)
    prices = dict(SYMBOLS)
    configured = set(gateway.settings.channels)
    rounds = 0
    log.info(
        "demo feed on: %s for %s",
        ", ".join(sorted(configured & {"ticker", "trades", "orderbook", "market"})),
        ", ".join(SYMBOLS),
    )
    while True:
        messages = [m for m in demo_round(prices, rng) if m["channel"] in configured]
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
        await asyncio.sleep(TICK_SECONDS)
