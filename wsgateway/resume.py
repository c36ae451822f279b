"""Subscribe with a position: join a topic's live feed without a gap or a duplicate.

A client that subscribes to a topic this process has not relayed lately, or that asks to
resume from a position (``since``), cannot simply be added to the topic's subscribers: its
place in the topic must come from the broker (an ``await``), and updates keep arriving
meanwhile. A :class:`Recovery` follows the client through three steps, as Centrifugo does
it (research brief, "Recovery"):

1. **pending** -- subscribed first: live updates of the topic are buffered, not sent;
2. **merge** -- the broker's answer arrives: the reply's position, the missed updates
   (``since`` + 1 .. the broker's top) when the broker still has all of them, then the
   buffered live updates past those, each ``seq`` once, in order;
3. **catching up** -- the broker's top can be ahead of this process's relay (updates
   published, not yet relayed here): live updates up to what the client already has are
   skipped for it; the first one past it makes the client an ordinary subscriber.

Pure: the channel hands it updates and frames; it decides what the client gets.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .brokers.base import History, Position, Snapshot, Update


class Step(enum.Enum):
    PENDING = "pending"
    CATCHING_UP = "catching_up"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of :meth:`Recovery.merge`."""

    #: the topic's latest position when the client subscribed: the reply's seq and epoch
    #: (``frames`` hold the missed updates up to it, then live updates past it)
    position: Position
    #: where the client stands once ``frames`` are sent
    top: Position
    #: True or False for a subscribe with ``since``; None without
    recovered: bool | None
    #: the updates to send after the reply (and the snapshot), in order, with their frames:
    #: missed ones, then buffered ones
    updates: list[tuple[Update, bytes]]
    #: updates of ``updates`` that came from the broker's history
    replayed: int
    #: the snapshot frame of the topic at ``position``, sent first, if any
    snapshot: bytes | None = None

    @property
    def frames(self) -> list[bytes]:
        """Every frame to send after the reply, in order."""
        frames = [] if self.snapshot is None else [self.snapshot]
        frames.extend(frame for _, frame in self.updates)
        return frames

    def reply_entry(self) -> dict[str, Any]:
        """This topic's entry in the ``subscribed`` reply's ``positions``."""
        entry: dict[str, Any] = {"seq": self.position.seq, "epoch": self.position.epoch}
        if self.recovered is not None:
            entry["recovered"] = self.recovered
        return entry


class Recovery:
    """One client joining one topic (see the module docstring)."""

    __slots__ = ("_buffer", "_forced", "conn", "since", "step", "top", "topic")

    def __init__(self, conn: Any, topic: str, since: Position | None) -> None:
        self.conn = conn
        self.topic = topic
        self.since = since
        self.step = Step.PENDING
        #: live updates relayed while pending, with their frames
        self._buffer: list[tuple[Update, bytes]] = []
        #: a reset that happened while pending: the position the topic restarted from
        self._forced: Position | None = None
        #: once catching up, the position the client has reached
        self.top = Position("", 0)

    def offer(self, update: Update, frame: bytes) -> bool:
        """A live update of the topic: True when the client should now get it as an
        ordinary subscriber (it joins), False when it was buffered or skipped."""
        if self.step is Step.PENDING:
            self._buffer.append((update, frame))
            return False
        top = self.top
        return update.epoch != top.epoch or update.seq > top.seq

    def reset(self, position: Position) -> None:
        """The topic restarted at ``position`` while pending: what was buffered belongs to
        a past the client can no longer resume from."""
        self._buffer.clear()
        self._forced = position

    def merge(
        self,
        history: History,
        frame_of: Callable[[Update], bytes],
        snapshot_of: Callable[[Snapshot], bytes] | None = None,
    ) -> Outcome:
        """Combine the broker's answer with the buffered live updates; the recovery then
        catches up from the outcome's position.

        A snapshot in the answer (a last or book topic, joined afresh or not recovered)
        goes first, in place of the missed updates: it reflects every update up to its
        position, and the buffered ones past it follow."""
        since = self.since
        position = history.position
        frames: list[tuple[Update, bytes]] = []
        recovered: bool | None = None
        replayed = 0
        snapshot = history.snapshot
        snapshot_frame: bytes | None = None
        if self._forced is not None:
            # (a snapshot read before is of a past the topic restarted from: not sent)
            position = self._forced
            recovered = False if since is not None else None
        elif snapshot is not None and snapshot_of is not None and history.updates is None:
            position = snapshot.position
            recovered = False if since is not None else None
            snapshot_frame = snapshot_of(snapshot)
        elif since is not None:
            recovered = history.updates is not None
            if history.updates is not None:
                for update in history.updates:
                    if update.seq > since.seq:
                        frames.append((update, frame_of(update)))
                        replayed += 1
        top = position
        for update, frame in self._buffer:
            # Live updates the client does not have yet: the next seq of its epoch, or the
            # first of the topic's first epoch (which began while this was pending).
            if (update.epoch == top.epoch and update.seq == top.seq + 1) or (
                top.epoch == "" and top.seq == 0 and update.seq == 1
            ):
                frames.append((update, frame))
                top = Position(update.epoch, update.seq)
        self._buffer.clear()
        self.step = Step.CATCHING_UP
        self.top = top
        return Outcome(position, top, recovered, frames, replayed, snapshot_frame)
