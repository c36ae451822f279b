"""Unit tests for wsgateway.listener's pure parts: the pending-connection bookkeeping, the
peer address, and raising the open-files limit (with a fake ``resource`` module)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from wsgateway import listener
from wsgateway.listener import PendingConnections, peer_address, raise_open_files_limit

from .fakes import FakeClock


def test_pending_connections_are_capped_per_address() -> None:
    refused: list[None] = []
    pending = PendingConnections(2, lambda: refused.append(None), FakeClock())
    assert pending.admit("a1", "10.0.0.1")
    assert pending.admit("a2", "10.0.0.1")
    assert not pending.admit("a3", "10.0.0.1")  # the third from one address
    assert pending.admit("b1", "10.0.0.2")  # another address is not affected
    assert len(refused) == 1
    assert (pending.count(), pending.count("10.0.0.1"), pending.count("10.0.0.2")) == (3, 2, 1)

    pending.settle("a1")  # upgraded or gone: a place is free again
    assert pending.admit("a4", "10.0.0.1")
    assert len(refused) == 1


def test_settle_is_idempotent_and_ignores_refused_connections() -> None:
    pending = PendingConnections(1, clock=FakeClock())
    assert pending.admit("a1", "10.0.0.1")
    assert not pending.admit("a2", "10.0.0.1")
    pending.settle("a2")  # refused, never counted: must not free a1's place
    assert pending.count("10.0.0.1") == 1
    pending.settle("a1")
    pending.settle("a1")  # upgraded, then lost
    assert pending.count() == 0
    assert pending.footprint() == {"connections": 0, "addresses": 0}


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    pending = PendingConnections(1, clock=clock)
    pending.admit("a", "10.0.0.1")
    with caplog.at_level(logging.WARNING, "wsgateway.listener"):
        for i in range(100):
            pending.admit(i, "10.0.0.1")
        clock.advance(60)
        pending.admit("late", "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "max_pending_per_ip" in lines[0]
    assert "99" in lines[1]  # the second line says how many were not logged


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        (("127.0.0.2", 5555), "127.0.0.2"),
        (("::1", 5555, 0, 0), "::1"),
        ("/run/wsgateway.sock", "unknown"),
        (None, "unknown"),
    ],
)
def test_peer_address(peer: object, address: str) -> None:
    transport = SimpleNamespace(get_extra_info=lambda name: peer)
    assert peer_address(transport) == address
    assert peer_address(None) == "unknown"


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, fail: bool = False) -> None:
        self.limits = (soft, hard)
        self.fail = fail

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.fail:
            raise ValueError("not allowed")
        self.limits = limits


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        (1024, 524288, 524288),  # raised to the hard limit
        (524288, 524288, 524288),  # already there
        (1024, -1, listener.UNLIMITED_NOFILE),  # unlimited hard limit
        (-1, -1, -1),  # unlimited both: left alone
    ],
)
def test_open_files_limit_is_raised_to_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, expected: int
) -> None:
    fake = FakeResource(soft, hard)
    monkeypatch.setattr(listener, "resource", fake)
    assert raise_open_files_limit() == expected
    assert fake.limits == (expected, hard)


def test_open_files_limit_that_cannot_be_raised_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listener, "resource", FakeResource(1024, 4096, fail=True))
    with caplog.at_level(logging.WARNING, "wsgateway.listener"):
        assert raise_open_files_limit() == 1024
    assert "could not raise the open-files limit from 1024 to 4096" in caplog.text


def test_without_a_resource_module_there_is_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    none: Any = None
    monkeypatch.setattr(listener, "resource", none)
    assert raise_open_files_limit() is None
