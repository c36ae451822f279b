"""The README's sample of ``wsgateway metrics`` is what the command prints.

A real gateway gets a subscriber and a few publishes, ``wsgateway metrics`` runs against it
as a user would, and the README's sample must have the same lines: the same words in the
same places, with the figures (which differ from run to run) as the only difference.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
from websockets.sync.client import connect

from tests.processes import GatewayNode, clean_env

ROOT = Path(__file__).resolve().parent.parent
#: a figure: 42, 0.21, 100.00%, 42s, 2.0s, 127.0.0.1:8080, host/1234 (a node id)
FIGURE = re.compile(r"^(-|[\d.]+(%|s|ms)?|[\w.-]+:\d+|[\w.-]+/\d+)$")


def readme_sample() -> list[str]:
    text = (ROOT / "README.md").read_text()
    after = text.split("`wsgateway metrics` prints:", 1)[1]
    block = after.split("```", 2)[1]
    return [line for line in block.split("\n")[1:] if line.strip() not in ("", "...")]


def shape(line: str) -> list[str]:
    """The line's words, each figure as ``#``."""
    return ["#" if FIGURE.match(word) else word for word in line.split()]


def test_the_readme_sample_of_wsgateway_metrics_is_what_it_prints() -> None:
    with GatewayNode() as node, connect(f"ws://{node.address}/ws/ticker") as ws:
        ws.send('{"type": "subscribe", "topics": ["BTC-USD"]}')
        ws.recv(timeout=10)
        for n in range(3):
            body = {"channel": "ticker", "topic": "BTC-USD", "data": {"n": n}}
            request = urllib.request.Request(
                f"{node.http}/api/publish",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).close()
            ws.recv(timeout=10)
        printed = subprocess.run(
            [sys.executable, "-m", "wsgateway", "metrics", "--url", node.http],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(),
            check=True,
        ).stdout
    real = {tuple(shape(line)) for line in printed.splitlines() if line.strip()}
    sample = readme_sample()
    assert len(sample) >= 5, sample  # the summary, both tables' headers and rows
    unmatched = [line for line in sample if tuple(shape(line)) not in real]
    assert not unmatched, f"README lines unlike any line printed:\n{unmatched}\n\n{printed}"
    headers = [line for line in printed.splitlines() if line.split()[:1] in (["channel"], ["node"])]
    assert all(tuple(shape(h)) in {tuple(shape(s)) for s in sample} for h in headers)
