"""Validity of a load generator result, and why not (wsgateway bench exits 1 on it)."""

from __future__ import annotations

from wsgateway.loadgen.result import finish, invalid_because


def test_a_clean_result_is_valid() -> None:
    result = finish({"clients": 10, "connect_errors": 0, "publish_errors": 0, "generator_cpu": 0.5})
    assert result["valid"] and invalid_because(result) == []


def test_each_reason_is_named() -> None:
    result = finish(
        {
            "clients": 10,
            "connect_errors": 8,
            "errors_sample": ["HTTP 503"],
            "publish_errors": 2,
            "generator_cpu": 0.95,
            "error": "boom",
        }
    )
    assert not result["valid"]
    assert invalid_because(result) == [
        "boom",
        "8 of 10 clients could not connect and subscribe (HTTP 503)",
        "2 publish requests failed",
        "the generator used 95% of its core (limit 90%): the figures measure the generator, "
        "not the server",
    ]
