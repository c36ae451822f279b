"""--url as the client commands take it: one normalisation for publish, subscribe, metrics."""

from __future__ import annotations

import pytest

from wsgateway.errors import UsageError
from wsgateway.urls import gateway_url


@pytest.mark.parametrize(
    ("given", "base", "channel"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", None),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080", None),
        ("http://127.0.0.1:8080/api/publish", "http://127.0.0.1:8080", None),
        ("http://127.0.0.1:8080/api/ws/metrics", "http://127.0.0.1:8080", None),
        ("http://127.0.0.1:8080/metrics", "http://127.0.0.1:8080", None),
        ("ws://127.0.0.1:8080", "http://127.0.0.1:8080", None),
        ("ws://127.0.0.1:8080/ws/ticker", "http://127.0.0.1:8080", "ticker"),
        ("ws://127.0.0.1:8080/ws/ticker/", "http://127.0.0.1:8080", "ticker"),
        ("wss://gw.example.com/ws/user", "https://gw.example.com", "user"),
        ("https://gw.example.com/md/api/publish", "https://gw.example.com/md", None),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", None),
        ("HTTP://[::1]:8080", "http://[::1]:8080", None),
    ],
)
def test_every_form_gives_the_base_without_doubled_paths(
    given: str, base: str, channel: str | None
) -> None:
    url = gateway_url(given)
    assert (url.base, url.channel) == (base, channel)
    assert url.http("/api/publish") == base + "/api/publish"
    assert url.ws("/ws/trades") == base.replace("http", "ws", 1) + "/ws/trades"


@pytest.mark.parametrize(
    "given", ["ftp://host:21", "http://", "http://h:1/?token=x", "redis://127.0.0.1:6379"]
)
def test_what_cannot_be_a_gateway_is_a_usage_error(given: str) -> None:
    with pytest.raises(UsageError, match="--url"):
        gateway_url(given)
