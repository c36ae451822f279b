"""wsgateway.book: parsing a book message, applying it, the checksum."""

from __future__ import annotations

import zlib

import pytest

from wsgateway.book import Book, Delta, InvalidDelta, checksum, delta_data, parse_delta, read_data


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        (50000.5, "50000.5"),
        ("50000.50", "50000.5"),
        (100, "100"),
        ("100.0", "100"),
        (1e-5, "0.00001"),
        ("0.5", "0.5"),
        ("007.10", "7.1"),
        (".25", "0.25"),
    ],
)
def test_prices_and_quantities_are_canonical_text(given: object, canonical: str) -> None:
    delta = parse_delta({"bids": [[given, given]]})
    assert delta.bids == ((canonical, canonical),)


def test_a_zero_quantity_in_any_form_is_zero() -> None:
    assert parse_delta({"asks": [["1", 0.0], ["2", "0.000"]]}).asks == (("1", "0"), ("2", "0"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "data: a book message must be an object"),
        ({"bids": [], "extra": 1}, "data.extra: unknown field"),
        ({"snapshot": 1}, "data.snapshot: must be true or false"),
        ({"bids": {}}, "data.bids: must be a list"),
        ({"bids": [["1"]]}, "data.bids[0]: must be a [price, qty] pair"),
        ({"asks": [["1", "1"], [0, "1"]]}, "data.asks[1][0]: price must be above 0"),
        ({"asks": [["-1", "1"]]}, "data.asks[0][0]: price must be a non-negative"),
        ({"asks": [["1e5", "1"]]}, "data.asks[0][0]: price must be a non-negative"),
        ({"asks": [[True, "1"]]}, "data.asks[0][0]: price must be a non-negative"),
        ({"asks": [[float("nan"), "1"]]}, "data.asks[0][0]: price must be a non-negative"),
        ({"asks": [["1", -2]]}, "data.asks[0][1]: qty must be a non-negative"),
        ({"asks": [["1", None]]}, "data.asks[0][1]: qty must be a non-negative"),
        ({"bids": [["1234567890.1234567", "1"]]}, "significant digits; at most 15"),
        ({"bids": [["1", "1." + "1" * 40]]}, "qty is 42 characters; at most 40"),
    ],
)
def test_a_bad_message_names_its_field(data: object, message: str) -> None:
    with pytest.raises(InvalidDelta, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_delta(data)


def test_levels_are_kept_best_first_by_value_not_text() -> None:
    book = Book()
    book.apply(
        parse_delta(
            {
                "bids": [["9", "1"], ["10", "2"], ["9.5", "3"]],
                "asks": [["11", "1"], ["100", "1"], ["10.5", "1"]],
            }
        )
    )
    assert book.bids.levels() == [("10", "2"), ("9.5", "3"), ("9", "1")]
    assert book.asks.levels() == [("10.5", "1"), ("11", "1"), ("100", "1")]
    assert book.bids.levels(2) == [("10", "2"), ("9.5", "3")]
    assert book.asks.levels(1) == [("10.5", "1")]


def test_a_delta_sets_replaces_and_removes_levels() -> None:
    book = Book()
    book.apply(Delta(bids=(("10", "1"), ("9", "1"))))
    changes = book.apply(Delta(bids=(("10", "5"), ("9", "0"), ("8", "0"))))
    assert changes == Delta(bids=(("10", "5"), ("9", "0"), ("8", "0")))
    assert book.bids.levels() == [("10", "5")]


def test_a_snapshot_replaces_the_whole_book_and_reports_it_best_first() -> None:
    book = Book()
    book.apply(Delta(bids=(("10", "1"),), asks=(("12", "1"),)))
    changes = book.apply(Delta(bids=(("8", "1"), ("9", "2")), snapshot=True))
    assert changes == Delta(bids=(("9", "2"), ("8", "1")), asks=(), snapshot=True)
    assert book.asks.levels() == []


def test_levels_beyond_max_levels_are_dropped_and_reported_as_removals() -> None:
    book = Book(max_levels=2)
    book.apply(Delta(bids=(("10", "1"), ("9", "1")), asks=(("11", "1"), ("12", "1"))))
    changes = book.apply(Delta(bids=(("10.5", "1"),), asks=(("10.8", "1"),)))
    assert changes == Delta(bids=(("10.5", "1"), ("9", "0")), asks=(("10.8", "1"), ("12", "0")))
    assert book.bids.levels() == [("10.5", "1"), ("10", "1")]
    assert book.asks.levels() == [("10.8", "1"), ("11", "1")]
    # A copy that applies the reported changes holds the same book.
    copy = Book()
    copy.apply(Delta(bids=(("10", "1"), ("9", "1")), asks=(("11", "1"), ("12", "1"))))
    copy.apply(changes)
    assert copy.snapshot() == book.snapshot()


def test_the_checksum_follows_krakens_formula_on_the_canonical_text() -> None:
    bids = [(f"{100 - i}.5", f"0.0{i + 1}") for i in range(12)]
    asks = [(f"{101 + i}", f"{i + 1}.25") for i in range(12)]
    text = "".join(
        p.replace(".", "").lstrip("0") + q.replace(".", "").lstrip("0")
        for p, q in asks[:10] + bids[:10]
    )
    assert checksum(bids, asks) == zlib.crc32(text.encode())
    book = Book()
    book.apply(Delta(tuple(bids), tuple(asks)))
    assert book.checksum() == checksum(bids, asks)
    assert Book().checksum() == 0


def test_update_data_has_the_documented_key_order_and_reads_back() -> None:
    data = delta_data(Delta(bids=(("1", "2"),), snapshot=True), 7)
    assert list(data) == ["snapshot", "bids", "asks", "checksum"]
    assert read_data(data) == (Delta(bids=(("1", "2"),), snapshot=True), 7)
    assert list(delta_data(Delta(), None)) == ["bids", "asks"]
    with pytest.raises(InvalidDelta, match="checksum: must be an integer"):
        read_data({"bids": [], "checksum": "x"})
