"""Unit tests for wsgateway.accesslog: which requests the access log writes at which level,
and the line a WebSocket session leaves when it ends."""

from __future__ import annotations

import logging

import pytest

from wsgateway.accesslog import NO_CLOSE_FRAME, close_code, log_session, request_level


@pytest.mark.parametrize("path", ["/", "/metrics", "/api/ws/metrics", "/healthz", "/readyz"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_what_a_monitor_polls_is_logged_at_debug(method: str, path: str) -> None:
    assert request_level(method, path, 200) == logging.DEBUG


def test_a_readiness_probe_refused_during_a_drain_is_still_a_poll() -> None:
    assert request_level("GET", "/readyz", 503) == logging.DEBUG


def test_a_monitor_polling_a_path_its_listener_does_not_serve_is_logged_at_info() -> None:
    # /metrics on the public port with metrics_port set: a misconfigured scraper
    assert request_level("GET", "/metrics", 404) == logging.INFO


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/publish", 200),
        ("POST", "/api/publish", 401),
        ("POST", "/api/drain", 202),
        ("GET", "/api", 200),
        ("GET", "/nope", 404),
        ("POST", "/metrics", 405),  # not a poll: a poll reads
        ("GET", "/ws/ticker", 429),  # a refused upgrade is an HTTP answer like any other
        ("GET", "/metrics/", 404),  # only the exact paths are polls
    ],
)
def test_other_requests_are_logged_at_info(method: str, path: str, status: int) -> None:
    assert request_level(method, path, status) == logging.INFO


def test_an_answered_upgrade_gets_no_request_line() -> None:
    # its session gets one line when it ends instead
    assert request_level("GET", "/ws/ticker", 101) is None


@pytest.mark.parametrize(
    ("sent", "seen", "code"),
    [
        (1013, None, 1013),  # the gateway closed it: a slow consumer
        (1012, 1000, 1012),  # what the gateway sent wins over the client's answer to it
        (None, 1000, 1000),  # the client closed it
        (None, 1009, 1009),  # aiohttp answered a frame too big
        (None, None, NO_CLOSE_FRAME),  # the peer vanished
        (None, 0, NO_CLOSE_FRAME),  # aiohttp's "no code"
    ],
)
def test_the_close_code_of_a_session(sent: int | None, seen: int | None, code: int) -> None:
    assert close_code(sent, seen) == code


def test_a_session_line_says_how_it_went(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.accesslog")
    with caplog.at_level(logging.INFO, logger="test.accesslog"):
        log_session(logger, "203.0.113.7", "ticker", 12.3456, 1000, "client_closed", 4, 1532)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        '203.0.113.7 "GET /ws/ticker" 101 session 12.346s close 1000 client_closed '
        "frames in 4 out 1532"
    )


def test_a_session_line_cannot_be_forged(caplog: pytest.LogCaptureFixture) -> None:
    # the address may come from a header a trusted proxy passed on
    logger = logging.getLogger("test.accesslog")
    with caplog.at_level(logging.INFO, logger="test.accesslog"):
        log_session(logger, '1.2.3.4\r\n5.6.7.8 "GET', "ticker", 1.0, 1000, "client_closed", 0, 0)
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert record.getMessage().startswith('1.2.3.4\\x0d\\x0a5.6.7.8 \\x22GET "GET /ws/ticker"')
