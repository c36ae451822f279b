"""``wsgateway metrics``: the JSON view (``/api/ws/metrics``) as tables for a terminal: a
summary line, one row per channel, and one per node of the cluster. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def format_metrics(view: dict[str, Any]) -> str:
    """The metrics view as a table for a terminal."""
    rate = view["overall_success_rate"]
    lines = [
        f"uptime {view['uptime_seconds']:.0f}s   active connections "
        f"{view['total_active_connections']}   sent {view['total_messages_sent']}   "
        f"errors {view['total_errors']}   success "
        f"{'-' if rate is None else f'{rate:.2%}'}   broker "
        f"{'connected' if view.get('broker_connected') else 'DISCONNECTED'}",
        "",
    ]
    header = (
        "channel",
        "active",
        "total",
        "published",
        "sent",
        "failed",
        "errors",
        "rejected",
        "success",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "last error",
    )
    rows = [header]
    for name, m in view["managers"].items():
        last = m["last_error"]
        rows.append(
            (
                name,
                str(m["active_connections"]),
                str(m["total_connections"]),
                str(m["messages_published"]),
                str(m["messages_sent"]),
                str(m["messages_failed"]),
                str(m["errors"]),
                str(sum(m["rejected"].values())),
                "-" if m["success_rate"] is None else f"{m['success_rate']:.2%}",
                *(_milliseconds(m["latency_seconds"][p]) for p in ("p50", "p90", "p99")),
                "-" if last is None else last["type"],
            )
        )
    lines += _table(rows)
    nodes = view.get("nodes")
    if nodes:
        lines += ["", *_table(_node_rows(nodes), last_left=False)]
    return "\n".join(lines)


def _node_rows(nodes: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The ``nodes`` of the metrics view: one row per gateway process in the cluster."""
    rows: list[tuple[str, ...]] = [
        ("node", "address", "worker", "pid", "uptime", "connections", "sent", "last seen")
    ]
    for node in nodes:
        # uptime is measured at the view's time: started + uptime is the view's "now".
        age = node["started"] + node["uptime"] - node["last_seen"]
        rows.append(
            (
                str(node["id"]),
                str(node["address"]),
                str(node["worker"]),
                str(node["pid"]),
                f"{node['uptime']:.0f}s",
                str(node["connections"]),
                str(node["sent"]),
                f"{max(0.0, age):.1f}s ago",
            )
        )
    return rows


def _table(rows: Sequence[tuple[str, ...]], *, last_left: bool = True) -> list[str]:
    """Rows as aligned text: the first column (and by default the last) to the left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, len(widths) - 1} if last_left else {0, 1}
    return [
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
