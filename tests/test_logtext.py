"""Unit tests for wsgateway.logtext: client text cannot forge or colour a log line."""

from __future__ import annotations

import pytest

from wsgateway.logtext import escape


@pytest.mark.parametrize(
    "text", ["", "/ws/ticker", "127.0.0.1", "::ffff:10.0.0.1", "GET", "/caf\u00e9/\u65e5\u672c"]
)
def test_printable_text_is_returned_as_it_is(text: str) -> None:
    assert escape(text) is text


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x00\x07\x08\t\x0b\x0c\x7f", "\\x00\\x07\\x08\\x09\\x0b\\x0c\\x7f"),
        ("\x85\x9b", "\\x85\\x9b"),  # C1: NEL and CSI
        ('say "hi"', "say \\x22hi\\x22"),
        ("back\\slash", "back\\x5cslash"),  # so that "\x0a" in the text cannot pose as an escape
        ("line\u2028sep\u2029para", "line\\u2028sep\\u2029para"),
        ("rtl\u202eoverride", "rtl\\u202eoverride"),
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_what_a_log_line_must_not_carry_is_escaped(text: str, escaped: str) -> None:
    assert escape(text) == escaped


def test_every_non_printable_code_point_below_0x10000_is_escaped() -> None:
    text = "".join(chr(c) for c in range(0x10000))  # lone surrogates included
    result = escape(text)
    assert result.isprintable()
    assert '"' not in result
    for forbidden in ("\r", "\n", "\x1b", "\x85", "\u2028"):
        assert forbidden not in result
