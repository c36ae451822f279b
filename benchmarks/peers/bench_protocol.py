"""The part of the bench protocol every peer shares: numbering published messages.

Each peer differs only in how it fans an update out; this turns a publish body into
``(topic, update)`` pairs shaped exactly like wsgateway's, so frame sizes match.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


def numbered_updates(
    body: dict[str, Any], sequences: dict[str, int]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(topic, update)`` for each message of a ``{"messages": [...]}`` body, numbered per
    topic in ``sequences``."""
    for message in body["messages"]:
        topic = message["topic"]
        sequences[topic] = sequences.get(topic, 0) + 1
        yield (
            topic,
            {
                "type": "update",
                "channel": message["channel"],
                "topic": topic,
                "seq": sequences[topic],
                "ts": time.time(),
                "data": message["data"],
            },
        )
