"""The demo feed's order book (wsgateway/demo.py): a snapshot, then level changes that keep
a consistent book around the random walk, applied as the gateway applies them."""

from __future__ import annotations

import random

from wsgateway.book import Book, parse_delta
from wsgateway.demo import DEPTH, SYMBOLS, DemoBook, demo_round, tick_size


def test_tick_sizes_follow_the_price() -> None:
    assert [format(tick_size(p), "f") for p in SYMBOLS.values()] == ["20", "1", "0.05", "0.00005"]


def test_the_book_starts_with_a_snapshot_and_stays_consistent_as_the_price_walks() -> None:
    rng = random.Random(7)
    prices = dict(SYMBOLS)
    demo_books: dict[str, DemoBook] = {}
    books = {symbol: Book() for symbol in SYMBOLS}
    for round_number in range(400):
        messages = demo_round(prices, demo_books, rng)
        tickers = {m["topic"]: m["data"] for m in messages if m["channel"] == "ticker"}
        for message in messages:
            if message["channel"] != "orderbook":
                continue
            delta = parse_delta(message["data"])
            assert delta.snapshot == (round_number == 0)
            book = books[message["topic"]]
            book.apply(delta)
            bids, asks = book.bids.levels(), book.asks.levels()
            assert bids and asks
            assert float(bids[0][0]) < float(asks[0][0])
            assert 5 <= len(bids) <= DEPTH + 6 and 5 <= len(asks) <= DEPTH + 6
            ticker = tickers[message["topic"]]
            assert (ticker["bid"], ticker["ask"]) == (float(bids[0][0]), float(asks[0][0]))
            assert float(bids[0][0]) <= ticker["price"] * 1.001
