"""The one-line messages of wsgateway subscribe when the gateway ends the session."""

from __future__ import annotations

from wsgateway.subscriber import describe_close, describe_error


def test_a_close_names_code_meaning_and_the_gateways_reason() -> None:
    assert describe_close(1012, "node draining") == (
        "the gateway closed the connection with 1012 (the node drains: reconnect): node draining"
    )
    assert describe_close(1013, "") == "the gateway closed the connection with 1013 (slow consumer)"
    assert describe_close(4000, "custom") == "the gateway closed the connection with 4000: custom"
    assert "lost" in describe_close(None, "")


def test_an_error_reply_names_code_and_message() -> None:
    frame = {"type": "error", "code": "invalid_topic", "message": "bad", "id": 1}
    assert describe_error(frame) == "the gateway answered the subscribe with invalid_topic: bad"
