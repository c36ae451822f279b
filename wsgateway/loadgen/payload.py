"""What the publisher puts in each message's ``data``, and how a client reads its stamp back.

``json``: ``{"t": <time.time()>, "pad": "xxx..."}``, for any channel; the client finds the
stamp after ``"t":``. ``book``: for a channel in mode ``book``, whose frames carry only
``bids``, ``asks`` and ``checksum`` (a ``"t"`` key would be refused), a delta of one level
per side: ``{"bids": [[price, "1.5"]], "asks": [[price, stamp]]}``. The stamp rides as the
ask's quantity (a decimal string, so it comes back as published), and the prices cycle over
:data:`BOOK_LEVELS` levels per side so the book stays small and each message changes it.
"""

from __future__ import annotations

from typing import Any

#: Levels per side the book payload cycles over, half a unit apart around :data:`MID`.
BOOK_LEVELS = 50
MID = 65000
#: In a book update frame the stamp is the fourth quoted text after ``"asks"``:
#: ``"asks":[["<price>","<stamp>"]]`` (a peer relaying it with stdlib json adds spaces).
ASKS = b'"asks"'


def json_data(stamp: float, pad: str) -> dict[str, Any]:
    return {"t": stamp, "pad": pad}


def book_data(index: int, stamp: float) -> dict[str, Any]:
    """The ``index``-th book delta: a bid and an ask ``index % BOOK_LEVELS`` steps out."""
    step = index % BOOK_LEVELS
    bid = canonical(MID - 0.5 * (step + 1))
    ask = canonical(MID + 0.5 * (step + 1))
    return {"bids": [[bid, "1.5"]], "asks": [[ask, canonical(stamp, 6)]]}


def canonical(value: float, places: int = 1) -> str:
    """``value`` as the gateway delivers a decimal: no exponent, no trailing zeros or "."."""
    return f"{value:.{places}f}".rstrip("0").rstrip(".")


def book_stamp(data: bytes) -> bytes | None:
    """The stamp of the first book update in a chunk (its ask's quantity), or None when the
    chunk holds none whole."""
    at = data.find(ASKS)
    if at < 0:
        return None
    at += len(ASKS) - 1
    for _ in range(3):  # the price's quotes, then the stamp's opening one
        at = data.find(b'"', at + 1, at + 40)
        if at < 0:
            return None
    end = data.find(b'"', at + 1, at + 40)
    return data[at + 1 : end] if end > 0 else None
