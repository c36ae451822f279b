"""Conflation: several updates of one topic sent to one client as a single frame.

On ``last`` and ``book`` channels a client that falls behind does not need every
intermediate value, only a correct current one: while its queued bytes are past the soft
bound (64 KiB, channel.CONFLATE_BYTES, or half of ``max_outbox_bytes`` if less), the updates
of a topic that are still waiting in its outbox are merged into one :class:`Pending` entry,
which becomes one ``update`` frame with ``from_seq`` when the outbox is written (protocol.md,
"Conflation"). A ``max_rate`` subscription is served the same way (ratecap.py). ``stream``
channels never conflate.

A ``last`` entry keeps the newest update. A ``book`` entry keeps each price level's newest
quantity ("0": removed), and, once a merged update replaced the whole book (``"snapshot":
true``), the whole book from it on; it sends the checksum of the newest update.

Pure apart from reading the frames it merges: no clock, no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import protocol
from .brokers.base import Update


class Pending:
    """The updates ``from_seq``..``update.seq`` of one topic, waiting for one client."""

    __slots__ = ("_frame", "asks", "bids", "checksum", "from_seq", "snapshot", "update")

    def __init__(self, update: Update, frame: bytes, book: bool) -> None:
        self.update = update
        self.from_seq = update.seq
        #: the frame of the newest update while it is the only one (sent as it is)
        self._frame: bytes | None = frame
        #: a book entry's merged levels, by price (None: a last entry)
        self.bids: dict[str, str] | None = {} if book else None
        self.asks: dict[str, str] = {}
        self.snapshot = False
        self.checksum: int | None = None
        if book:
            self._add(frame)

    def merge(self, update: Update, frame: bytes) -> bool:
        """Fold ``update`` in; False (nothing changed) when it does not follow on: another
        epoch, or a seq that is not the next (the caller queues it on its own)."""
        newest = self.update
        if update.epoch != newest.epoch or update.seq != newest.seq + 1:
            return False
        if self.bids is not None:
            self._add(frame)
        self.update = update
        self._frame = None
        return True

    def _add(self, frame: bytes) -> None:
        data = orjson.loads(payload(frame))["data"]
        if data.get("snapshot"):
            self.snapshot = True
            self.bids = {}
            self.asks = {}
        bids, asks = self.bids, self.asks
        assert bids is not None
        for side, levels in ((bids, data.get("bids", ())), (asks, data.get("asks", ()))):
            for price, qty in levels:
                if qty == "0" and self.snapshot:
                    side.pop(price, None)  # a whole book holds no removals
                else:
                    side[price] = qty
        self.checksum = data.get("checksum")

    @property
    def merged(self) -> int:
        """Updates folded into this one's frame besides the newest."""
        return self.update.seq - self.from_seq

    def frame(self, channel: str) -> bytes:
        """The frame to send: the newest update's own when nothing was merged."""
        if self._frame is not None:
            return self._frame
        update = self.update
        data: Any = update.data
        if self.bids is not None:
            data = {"snapshot": True} if self.snapshot else {}
            data["bids"] = [[price, qty] for price, qty in self.bids.items()]
            data["asks"] = [[price, qty] for price, qty in self.asks.items()]
            if self.checksum is not None:
                data["checksum"] = self.checksum
        # The first update of an epoch names it, merged or not.
        epoch = update.epoch if self.from_seq == 1 and update.epoch else None
        return protocol.text_frame(
            protocol.update(
                channel, update.topic, update.seq, update.ts, data, epoch, self.from_seq
            )
        )


def payload(frame: bytes) -> bytes:
    """The payload of an unmasked server frame made by protocol.text_frame."""
    length = frame[1] & 0x7F
    return frame[2:] if length < 126 else frame[4:] if length == 126 else frame[10:]
