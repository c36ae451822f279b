"""A deterministic synthetic market feed for the replay harness (benchmarks/replay.py), and
the reference state it must leave behind.

Per symbol: an order book (``orderbook``, mode book) opened with a snapshot publish, then
level deltas (absolute qty, qty 0 removes, prices and quantities as decimal strings, some
written in a non-canonical form such as ``"100.50"``), now and then another snapshot
publish; ticker values (``ticker``, mode last) and trades (``trades``, mode stream) between
them. The same seed gives the same feed, byte for byte.

The reference applies the feed as the gateway must: each (channel, topic) numbered 1, 2, 3...
in publish order; each book with :class:`wsgateway.book.Book` bounded to the gateway's
``max_book_levels``. It keeps, per topic and seq, the checksum of the book (book), or the
value published (ticker, trades), and the final book: what every client must end with.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wsgateway.book import Book, parse_delta

BOOK = "orderbook"
LAST = "ticker"
STREAM = "trades"
CHANNELS = (BOOK, LAST, STREAM)
#: price step of every book
TICK_CENTS = 1
#: levels each side of the first snapshot, and how far from the mid a delta reaches (ticks):
#: further than max_book_levels, so that the gateway drops the worst levels now and then
OPENING_LEVELS = 30
REACH_TICKS = 90
#: chance that a step also publishes a ticker value, a trade, a whole new book
TICKER_CHANCE = 0.25
TRADE_CHANCE = 0.25
SNAPSHOT_CHANCE = 0.0005

Message = dict[str, Any]


def symbols(count: int) -> list[str]:
    return [f"S{i:02d}-USD" for i in range(count)]


def _price(cents: int, rng: random.Random) -> str:
    text = f"{cents // 100}.{cents % 100:02d}"
    # Most prices canonical; some with a trailing zero or a dot the gateway must strip.
    if rng.random() < 0.1:
        return text + "0"
    return text.rstrip("0").rstrip(".") if rng.random() < 0.8 else text


def _qty(rng: random.Random) -> str:
    units = rng.randint(1, 500_000)
    text = f"{units // 10_000}.{units % 10_000:04d}"
    return text if rng.random() < 0.2 else text.rstrip("0").rstrip(".")


@dataclass
class Reference:
    """What the gateway must deliver: per (channel, topic) the seq reached, and per seq the
    book checksum (book) or the value (last, stream); the final books."""

    max_levels: int
    seqs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: checksums[topic][seq] for the book channel (index 0 unused)
    checksums: dict[str, list[int]] = field(default_factory=dict)
    #: values[(channel, topic)][seq] for the last and stream channels (index 0 unused)
    values: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    books: dict[str, Book] = field(default_factory=dict)

    def apply(self, message: Message) -> None:
        channel, topic, data = message["channel"], message["topic"], message["data"]
        key = (channel, topic)
        self.seqs[key] = self.seqs.get(key, 0) + 1
        if channel == BOOK:
            book = self.books.get(topic)
            if book is None:
                book = self.books[topic] = Book(self.max_levels)
                self.checksums[topic] = [0]
            book.apply(parse_delta(data))
            self.checksums[topic].append(book.checksum())
        else:
            self.values.setdefault(key, [None]).append(data)

    def final_seq(self, channel: str, topic: str) -> int:
        return self.seqs.get((channel, topic), 0)


class Feed:
    """The feed for ``count`` symbols and ``deltas`` book deltas, from ``seed``."""

    def __init__(self, count: int, deltas: int, seed: int, max_levels: int) -> None:
        self.symbols = symbols(count)
        self.deltas = deltas
        self.seed = seed
        self.reference = Reference(max_levels)
        self.messages: list[Message] = list(self._generate())
        for message in self.messages:
            self.reference.apply(message)

    def counts(self) -> dict[str, int]:
        totals = dict.fromkeys(CHANNELS, 0)
        for (channel, _topic), seq in self.reference.seqs.items():
            totals[channel] += seq
        return totals

    def _generate(self) -> Iterator[Message]:
        rng = random.Random(self.seed)
        mids = {s: 10_000 + 3_700 * i for i, s in enumerate(self.symbols)}  # cents
        trade_ids = dict.fromkeys(self.symbols, 0)
        for symbol in self.symbols:
            yield self._snapshot(symbol, mids[symbol], rng)
        for step in range(self.deltas):
            symbol = rng.choice(self.symbols)
            if rng.random() < 0.05:
                mids[symbol] += rng.choice((-1, 1)) * TICK_CENTS
            mid = mids[symbol]
            if rng.random() < SNAPSHOT_CHANCE:
                yield self._snapshot(symbol, mid, rng)
            else:
                yield {"channel": BOOK, "topic": symbol, "data": self._delta(mid, rng)}
            if rng.random() < TICKER_CHANCE:
                value = {"price": _price(mid, rng), "volume": _qty(rng), "step": step}
                yield {"channel": LAST, "topic": symbol, "data": value}
            if rng.random() < TRADE_CHANCE:
                trade_ids[symbol] += 1
                trade = {
                    "id": trade_ids[symbol],
                    "price": _price(mid + rng.randint(-3, 3), rng),
                    "qty": _qty(rng),
                    "side": rng.choice(("buy", "sell")),
                }
                yield {"channel": STREAM, "topic": symbol, "data": trade}

    @staticmethod
    def _snapshot(symbol: str, mid: int, rng: random.Random) -> Message:
        bids = [[_price(mid - k, rng), _qty(rng)] for k in range(1, OPENING_LEVELS + 1)]
        asks = [[_price(mid + k, rng), _qty(rng)] for k in range(1, OPENING_LEVELS + 1)]
        return {
            "channel": BOOK,
            "topic": symbol,
            "data": {"bids": bids, "asks": asks, "snapshot": True},
        }

    @staticmethod
    def _delta(mid: int, rng: random.Random) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for _ in range(rng.randint(1, 3)):
            side = rng.choice(("bids", "asks"))
            # Near the mid most of the time: the top of the book (the checksum) moves often.
            reach = rng.randint(1, 12) if rng.random() < 0.7 else rng.randint(1, REACH_TICKS)
            cents = mid - reach if side == "bids" else mid + reach
            qty = "0" if rng.random() < 0.3 else _qty(rng)
            data.setdefault(side, []).append([_price(cents, rng), qty])
        return data
