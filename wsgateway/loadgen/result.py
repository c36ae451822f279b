"""The figures a run reports: measurement windows, latency percentiles, validity, progress."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .client import Stats
from .probe import ProcessProbe, busy_cpu_seconds, own_cpu_seconds

#: A result is trusted only while the generator used less than this share of its core.
SATURATED = 0.9


def percentiles(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50": at(0.5),
        "p99": at(0.99),
        "max": round(ordered[-1] * 1000, 3),
        "samples": len(ordered),
    }


class Window:
    """CPU, deliveries and server figures between two instants."""

    def __init__(self, stats: Stats, probe: ProcessProbe | None) -> None:
        self.stats, self.probe = stats, probe
        self.wall = time.perf_counter()
        self.cpu = own_cpu_seconds()
        self.delivered = stats.delivered
        self.server_cpu = probe.cpu_seconds() if probe else 0.0
        self.machine_cpu = busy_cpu_seconds()

    def since(self, start: Window) -> dict[str, Any]:
        wall = self.wall - start.wall
        delivered = self.delivered - start.delivered
        result: dict[str, Any] = {
            "seconds": round(wall, 3),
            "delivered": delivered,
            "deliveries_per_s": round(delivered / wall, 1) if wall > 0 else 0.0,
            "generator_cpu": round((self.cpu - start.cpu) / wall, 3) if wall > 0 else 0.0,
        }
        if wall > 0:
            # Whatever else ran on the machine meanwhile (other processes, interrupts): on a
            # shared box it explains a noisy figure.
            others = (self.machine_cpu - start.machine_cpu) - (self.cpu - start.cpu)
            if self.probe is not None:
                others -= self.server_cpu - start.server_cpu
            result["background_cpu"] = round(max(0.0, others) / wall, 3)
        if self.probe is not None:
            server_cpu = self.server_cpu - start.server_cpu
            result["server_cpu_s"] = round(server_cpu, 3)
            result["server_cpu"] = round(server_cpu / wall, 3) if wall > 0 else 0.0
            result["server_cpu_us_per_delivery"] = (
                round(server_cpu / delivered * 1e6, 3) if delivered else None
            )
        return result


def finish(result: dict[str, Any]) -> dict[str, Any]:
    # The generator's own CPU decides whether the figures measure the server or us.
    result["generator_saturated"] = result.get("generator_cpu", 0.0) >= SATURATED
    result["valid"] = not invalid_because(result)
    return result


def invalid_because(result: dict[str, Any]) -> list[str]:
    """Why a result does not measure the server (empty: it does), one phrase per reason."""
    reasons = []
    if result.get("error"):
        reasons.append(str(result["error"]))
    if result.get("connect_errors"):
        sample = "; ".join(result.get("errors_sample", []))
        reasons.append(
            f"{result['connect_errors']} of {result.get('clients', '?')} clients could not "
            f"connect and subscribe" + (f" ({sample})" if sample else "")
        )
    if result.get("publish_errors"):
        reasons.append(f"{result['publish_errors']} publish requests failed")
    if result.get("generator_saturated"):
        reasons.append(
            f"the generator used {result.get('generator_cpu', 0.0):.0%} of its core (limit "
            f"{SATURATED:.0%}): the figures measure the generator, not the server"
        )
    return reasons


def progress_line(
    phase: str, elapsed: float, total: float, figures: dict[str, Any], rss: int
) -> str:
    line = (
        f"{phase} {elapsed:4.1f}/{total:.1f}s  {figures['deliveries_per_s']:>11,.0f} deliveries/s"
        f"  generator cpu {figures['generator_cpu']:4.0%}"
    )
    if "server_cpu" in figures:
        line += f"  server cpu {figures['server_cpu']:4.0%}  rss {rss / 2**20:6.1f} MiB"
    return line
