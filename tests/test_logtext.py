"""Unit tests for wsgateway.logtext: client text cannot forge or colour a log line."""

from __future__ import annotations

import logging

import pytest

from wsgateway.logtext import ThrottledLog, escape


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


# -- aiohttp's error log, throttled ---------------------------------------------------------


def test_error_lines_are_throttled_per_message_and_say_what_was_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = ThrottledLog(logging.getLogger("test.throttled"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="test.throttled"):
        for _ in range(5):
            log.error("Error handling request from %s", "10.0.0.1")
        log.error("Unhandled exception")  # another message has its own interval
        log.debug("debug lines are never held back")
        log.debug("debug lines are never held back")
        now[0] += 10.0
        log.error("Error handling request from %s", "10.0.0.2")
    assert [r.getMessage() for r in caplog.records] == [
        "Error handling request from 10.0.0.1",
        "Unhandled exception",
        "debug lines are never held back",
        "debug lines are never held back",
        "Error handling request from 10.0.0.2 (4 more since the last line)",
    ]


def test_exception_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = ThrottledLog(logging.getLogger("test.throttled"))
    with caplog.at_level(logging.ERROR, logger="test.throttled"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("Error handling request")
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is ValueError
