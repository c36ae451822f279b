"""Order books: what a ``book`` topic publishes, how it is applied, and its checksum.

A publisher sends absolute quantities per price level (qty 0 removes the level), or a whole
book with ``"snapshot": true``. The gateway keeps every book topic's current book in its
broker, applies each message in ``seq`` order and tells subscribers what changed; a client
applies the same changes to its copy and may check it against the ``checksum``
(docs/protocol.md, "Order books"). Prices and quantities travel as canonical decimal text, so
that two copies of a book compare exactly and a level is found by its price's text whatever
form the publisher wrote it in.

Pure: no I/O, no clock. Used by the memory broker (the book itself), by the Redis broker
(parsing and the snapshot's checksum; scripts/publish.lua applies), and by the SDK.
"""

from __future__ import annotations

import bisect
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

#: (price, qty) as canonical decimal text
Level = tuple[str, str]

#: significant digits a price may have: distinct prices of at most 15 digits are distinct
#: doubles in the same order (DBL_DIG), which is how Redis sorts them (a sorted set's score)
MAX_PRICE_DIGITS = 15
#: characters a quantity may have
MAX_QTY_LENGTH = 40
#: levels per side the checksum covers, best first (Kraken's formula)
CHECKSUM_DEPTH = 10
BOOK_KEYS = frozenset({"bids", "asks", "snapshot"})
_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")
#: text that is canonical already (no leading or trailing zero, at most 64 characters)
_CANONICAL_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,63})(?:\.[0-9]{0,62}[1-9])?")


class InvalidDelta(ValueError):
    """A book message that cannot be applied: ``"<field>: <why>"``, e.g.
    ``data.bids[0][1]: qty must be ...``, split into ``field`` and ``reason``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.field, _, self.reason = text.partition(": ")


@dataclass(frozen=True, slots=True)
class Delta:
    """Levels to set on each side (qty "0" removes one), or, with ``snapshot``, the whole
    book."""

    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    snapshot: bool = False


def parse_delta(data: object, where: str = "data") -> Delta:
    """The book message a publisher sent, checked and made canonical; raises
    :class:`InvalidDelta` naming the first field at fault."""
    if not isinstance(data, Mapping):
        raise InvalidDelta(
            f'{where}: a book message must be an object {{"bids": [[price, qty], ...], '
            f'"asks": [...], "snapshot"?: true}}'
        )
    unknown = sorted(str(key) for key in data if key not in BOOK_KEYS)
    if unknown:
        raise InvalidDelta(
            f"{where}.{unknown[0]}: unknown field; a book message has only bids, asks and snapshot"
        )
    snapshot = data.get("snapshot", False)
    if not isinstance(snapshot, bool):
        raise InvalidDelta(f"{where}.snapshot: must be true or false")
    return Delta(
        _side(data.get("bids", []), f"{where}.bids"),
        _side(data.get("asks", []), f"{where}.asks"),
        snapshot,
    )


def _side(levels: object, where: str) -> tuple[Level, ...]:
    if not isinstance(levels, list):
        raise InvalidDelta(f"{where}: must be a list of [price, qty] pairs")
    parsed = []
    for i, level in enumerate(levels):
        if not isinstance(level, list) or len(level) != 2:
            raise InvalidDelta(f"{where}[{i}]: must be a [price, qty] pair")
        price = canonical_price(level[0], f"{where}[{i}][0]")
        qty = canonical_qty(level[1], f"{where}[{i}][1]")
        parsed.append((price, qty))
    return tuple(parsed)


def canonical_price(value: object, where: str) -> str:
    text = _canonical(value, where, "price")
    if text == "0":
        raise InvalidDelta(f"{where}: price must be above 0")
    digits = len(text.replace(".", "").strip("0"))
    if digits > MAX_PRICE_DIGITS:
        raise InvalidDelta(
            f"{where}: price has {digits} significant digits; at most {MAX_PRICE_DIGITS}"
        )
    return text


def canonical_qty(value: object, where: str) -> str:
    text = _canonical(value, where, "qty")
    if len(text) > MAX_QTY_LENGTH:
        raise InvalidDelta(f"{where}: qty is {len(text)} characters; at most {MAX_QTY_LENGTH}")
    return text


def _canonical(value: object, where: str, what: str) -> str:
    """The canonical text of a non-negative decimal: no exponent, no sign, no leading zero
    (but "0.5"), no trailing fractional zero, no trailing "."."""
    if type(value) is str and _CANONICAL_TEXT.fullmatch(value):
        return value  # the common case, canonical already: no Decimal needed
    rule = f'{what} must be a non-negative decimal number or string (e.g. 50000.5 or "50000.5")'
    if isinstance(value, bool):
        raise InvalidDelta(f"{where}: {rule}")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidDelta(f"{where}: {rule}")
        number = Decimal(repr(value))  # the shortest text that reads back as this double
    elif isinstance(value, str):
        if len(value) > 64 or not _DECIMAL_TEXT.fullmatch(value):
            raise InvalidDelta(f"{where}: {rule}")
        try:
            number = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            raise InvalidDelta(f"{where}: {rule}") from None
    else:
        raise InvalidDelta(f"{where}: {rule}")
    if number < 0:
        raise InvalidDelta(f"{where}: {rule}")
    if number == 0:
        return "0"
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def price_key(price: str) -> tuple[float, str]:
    """Sort key of a price: its value as a double, as Redis orders a sorted set's scores
    (ties by text, as Redis orders equal scores)."""
    return (float(price), price)


class Side:
    """One side of a book: qty by price, and the prices in ascending order."""

    __slots__ = ("_keys", "descending", "qty")

    def __init__(self, descending: bool) -> None:
        self.descending = descending  # bids: the best is the highest price
        self.qty: dict[str, str] = {}
        self._keys: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.qty)

    def set(self, price: str, qty: str) -> None:
        if qty == "0":
            if self.qty.pop(price, None) is not None:
                key = price_key(price)
                del self._keys[bisect.bisect_left(self._keys, key)]
            return
        if price not in self.qty:
            bisect.insort(self._keys, price_key(price))
        self.qty[price] = qty

    def trim(self, keep: int) -> list[str]:
        """Drop the worst levels beyond ``keep``; returns their prices, best first."""
        extra = len(self._keys) - keep
        if extra <= 0:
            return []
        if self.descending:  # the worst bids are the lowest: the front
            dropped, self._keys = self._keys[:extra], self._keys[extra:]
            dropped.reverse()
        else:
            dropped, self._keys = self._keys[keep:], self._keys[:keep]
        for _, price in dropped:
            del self.qty[price]
        return [price for _, price in dropped]

    def levels(self, depth: int | None = None) -> list[Level]:
        """The levels best first (at most ``depth``)."""
        keys = self._keys
        if self.descending:
            chosen = keys[::-1] if depth is None else keys[: -depth - 1 : -1]
        else:
            chosen = keys if depth is None else keys[:depth]
        qty = self.qty
        return [(price, qty[price]) for _, price in chosen]

    def clear(self) -> None:
        self.qty.clear()
        self._keys.clear()


class Book:
    """One topic's book. ``max_levels`` bounds each side (None: unbounded, a client's copy)."""

    __slots__ = ("asks", "bids", "max_levels")

    def __init__(self, max_levels: int | None = None) -> None:
        self.max_levels = max_levels
        self.bids = Side(descending=True)
        self.asks = Side(descending=False)

    def apply(self, delta: Delta) -> Delta:
        """Apply ``delta``; returns what changed, as subscribers are told it: the delta's
        levels then one removal per level dropped by ``max_levels`` (for a snapshot, the
        whole book after it)."""
        if delta.snapshot:
            self.bids.clear()
            self.asks.clear()
        for price, qty in delta.bids:
            self.bids.set(price, qty)
        for price, qty in delta.asks:
            self.asks.set(price, qty)
        dropped_bids: list[str] = []
        dropped_asks: list[str] = []
        if self.max_levels is not None:
            dropped_bids = self.bids.trim(self.max_levels)
            dropped_asks = self.asks.trim(self.max_levels)
        if delta.snapshot:
            return Delta(tuple(self.bids.levels()), tuple(self.asks.levels()), True)
        if not dropped_bids and not dropped_asks:
            return delta
        return Delta(
            delta.bids + tuple((price, "0") for price in dropped_bids),
            delta.asks + tuple((price, "0") for price in dropped_asks),
        )

    def checksum(self) -> int:
        return checksum(self.bids.levels(CHECKSUM_DEPTH), self.asks.levels(CHECKSUM_DEPTH))

    def snapshot(self) -> Delta:
        """The whole book, best first."""
        return Delta(tuple(self.bids.levels()), tuple(self.asks.levels()), True)


def checksum(bids: Sequence[Level], asks: Sequence[Level]) -> int:
    """CRC32 of the best 10 asks then the best 10 bids (each list best first), every level's
    price then qty with "." removed and leading zeros stripped (Kraken's book checksum)."""
    parts = []
    for price, qty in [*asks[:CHECKSUM_DEPTH], *bids[:CHECKSUM_DEPTH]]:
        parts.append(price.replace(".", "").lstrip("0"))
        parts.append(qty.replace(".", "").lstrip("0"))
    return zlib.crc32("".join(parts).encode("ascii"))


def delta_data(delta: Delta, crc: int | None) -> dict[str, Any]:
    """An update's (or a snapshot's) ``data``: keys in the documented order, the order
    scripts/publish.lua writes them in, so both brokers send the same bytes."""
    data: dict[str, Any] = {"snapshot": True} if delta.snapshot else {}
    data["bids"] = [list(level) for level in delta.bids]
    data["asks"] = [list(level) for level in delta.asks]
    if crc is not None:
        data["checksum"] = crc
    return data


def read_data(data: object, where: str = "data") -> tuple[Delta, int | None]:
    """A book frame's ``data`` as a client receives it (an update, a snapshot or a
    conflated update): the delta, and the checksum of the book after it when sent."""
    if not isinstance(data, Mapping):
        raise InvalidDelta(f"{where}: a book frame's data must be an object")
    crc = data.get("checksum")
    if crc is not None and (isinstance(crc, bool) or not isinstance(crc, int)):
        raise InvalidDelta(f"{where}.checksum: must be an integer")
    fields = {key: value for key, value in data.items() if key != "checksum"}
    return parse_delta(fields, where), crc
