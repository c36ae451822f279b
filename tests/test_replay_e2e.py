"""The replay harness (benchmarks/replay.py) in small: a synthetic feed of books, tickers and
trades replayed against fast, slow, max_rate and flaky clients of a real gateway, on both
brokers; every client must end with the reference state (no timing is asserted).

On a broker without book mode (the Redis side of issue 9 before it lands), the harness says
so (exit status 3) and the test is skipped with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CANNOT_RUN = 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_replayed_feed_leaves_every_client_with_the_reference_state(
    broker: str, tmp_path: Path
) -> None:
    figures = tmp_path / "replay.json"
    run = subprocess.run(
        [
            sys.executable, "benchmarks/replay.py", "--broker", broker,
            "--symbols", "3", "--deltas", "2000", "--seed", "7",
            "--fast", "2", "--slow", "1", "--rated", "1", "--flaky", "2",
            "--settle", "60", "--json", str(figures),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )  # fmt: skip
    if run.returncode == CANNOT_RUN:
        result = json.loads(figures.read_text())
        pytest.skip(f"the {broker} broker cannot run the replay yet: {result['missing']}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    result = json.loads(figures.read_text())
    assert result["problems"] == []
    rows = {(row["channel"], row["kind"]): row for row in result["rows"]}
    # Each kind of client really did what it is there for.
    assert all(row["frames"] > 0 for row in rows.values())
    assert rows["orderbook", "fast"]["checksums"] > 0
    assert rows["orderbook", "fast"]["snapshots"] > 0  # the mid-feed subscriber's
    assert sum(row["drops"] for (_, kind), row in rows.items() if kind == "flaky") > 0
    assert sum(row["resumes"] for row in rows.values()) > 0
