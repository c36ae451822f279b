"""ProcessMetrics reports what prometheus_client's ProcessCollector does, without listing
every descriptor on each scrape."""

from __future__ import annotations

import socket
import sys

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from wsgateway.metrics import ProcessMetrics

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def families(collector: ProcessCollector) -> dict[str, tuple[str, float]]:
    return {f.name: (f.type, f.samples[0].value) for f in collector.collect()}


def test_same_families_and_values_as_prometheus_client() -> None:
    sockets = [socket.socket() for _ in range(50)]
    try:
        ours = families(ProcessMetrics(registry=CollectorRegistry()))
        theirs = families(ProcessCollector(registry=CollectorRegistry()))
    finally:
        for sock in sockets:
            sock.close()
    assert ours.keys() == theirs.keys()
    for name, (kind, value) in theirs.items():
        assert ours[name][0] == kind
        if name in ("process_open_fds", "process_max_fds", "process_start_time_seconds"):
            # prometheus_client's listing counts the descriptor it lists with
            assert abs(ours[name][1] - value) <= 1, name
    assert ours["process_open_fds"][1] >= 50
