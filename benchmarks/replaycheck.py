"""What one replay client checks, frame by frame, and at the end (benchmarks/replay.py).

Written from the protocol reference (docs/protocol.md, issue 9's contract), not from the
gateway's code: the independent half of the proof. Per topic a client holds its position
(epoch, seq) and, by mode, its copy of the book (``book``), the latest value (``last``) or
how many times it got each seq (``stream``). Every frame is checked as it arrives:

- continuity: an update's ``seq`` is the previous seq + 1, or a conflated one's
  ``from_seq`` is (``last``/``book`` only); a ``snapshot`` comes exactly where the
  ``subscribed`` reply's position said, and only on ``last``/``book``;
- content: a book frame's ``checksum`` equals the client's own book after applying it and
  the reference book's at that seq; a ticker value or a trade equals what was published at
  that seq;
- close codes: 1013 (slow consumer) is counted; the client resumes with ``since``.

At the end each topic must stand at the reference's final seq, with the reference's whole
book, its final value, or (stream) every seq from the first it was owed exactly once.

Pure: frames in, violations out; the caller passes the time for the max_rate count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from feed import BOOK, LAST, STREAM, Reference

from wsgateway.book import Book, InvalidDelta, read_data

MODES = {BOOK: "book", LAST: "last", STREAM: "stream"}
#: violations kept word for word per client (all are counted)
KEPT = 20


@dataclass
class TopicState:
    epoch: str = ""
    seq: int = 0
    #: the first seq this client is owed on a stream topic (1, or past a late subscribe)
    first: int = 1
    #: (seq, epoch) of the snapshot the last subscribed reply announced
    expect_snapshot: tuple[int, str] | None = None
    book: Book | None = None
    value: Any = None
    #: stream: how many times each seq arrived
    counts: Counter[int] = field(default_factory=Counter)
    #: max_rate: update frames received, and when the first and the last arrived
    frames: int = 0
    first_at: float = 0.0
    last_at: float = 0.0


@dataclass
class Tally:
    frames: int = 0
    updates: int = 0
    conflated: int = 0
    folded: int = 0  # updates replaced by conflated frames
    snapshots: int = 0
    checksums: int = 0
    resumes: int = 0
    not_recovered: int = 0
    cuts: int = 0  # closed with 1013
    lost: int = 0  # a slow client's connection reset (1006) after it was cut
    drops: int = 0  # connections the client dropped on purpose
    violations: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class ClientCheck:
    """One client's view of ``topics`` on ``channel``, checked against ``reference``."""

    def __init__(self, name: str, channel: str, topics: list[str], reference: Reference) -> None:
        self.name = name
        self.channel = channel
        self.mode = MODES[channel]
        self.reference = reference
        self.topics = {topic: TopicState() for topic in topics}
        self.tally = Tally()
        self.problems: list[str] = []

    # -- what the client sends ----------------------------------------------------------------

    def since(self) -> dict[str, dict[str, Any]]:
        """Its position in every topic, for a resume."""
        return {t: {"seq": s.seq, "epoch": s.epoch} for t, s in self.topics.items()}

    # -- frames -------------------------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.tally.violations += 1
        if len(self.problems) < KEPT:
            self.problems.append(f"{self.name}: {text}")

    def subscribed(self, frame: dict[str, Any], resumed: bool) -> None:
        positions = frame.get("positions", {})
        if resumed:
            self.tally.resumes += 1
        for topic, state in self.topics.items():
            position = positions.get(topic)
            if position is None:
                self.violation(f"{topic}: no position in the subscribed reply")
                continue
            seq, epoch = position["seq"], position["epoch"]
            state.expect_snapshot = None
            recovered = position.get("recovered")
            if not resumed:
                if recovered is not None:
                    self.violation(f"{topic}: 'recovered' in a reply without since")
                if seq and self.mode != "stream":
                    state.expect_snapshot = (seq, epoch)
                elif seq:
                    state.first = seq + 1  # a late subscriber is owed what follows
                    state.seq, state.epoch = seq, epoch
                continue
            if recovered is None:
                self.violation(f"{topic}: no 'recovered' in a reply to since")
            elif recovered:
                if state.seq == 0 and not state.epoch:
                    state.epoch = epoch  # resumed from the topic's start
                if epoch != state.epoch or seq < state.seq:
                    self.violation(
                        f"{topic}: recovered from ({state.epoch}, {state.seq}) to ({epoch}, {seq})"
                    )
            else:
                self.tally.not_recovered += 1
                if self.mode == "stream":
                    self.violation(
                        f"{topic}: stream resume from {state.seq} not recovered "
                        f"(at {seq}): updates lost"
                    )
                    state.seq, state.epoch = seq, epoch
                elif seq:
                    state.expect_snapshot = (seq, epoch)

    def frame(self, frame: dict[str, Any], now: float) -> None:
        self.tally.frames += 1
        kind = frame.get("type")
        if kind == "update":
            self.update(frame, now)
        elif kind == "snapshot":
            self.snapshot(frame)
        elif kind in ("heartbeat", "pong"):
            pass
        else:
            self.violation(f"unexpected frame {str(frame)[:200]}")

    def snapshot(self, frame: dict[str, Any]) -> None:
        self.tally.snapshots += 1
        topic, seq = frame["topic"], frame["seq"]
        state = self.topics.get(topic)
        if state is None or self.mode == "stream":
            self.violation(f"{topic}: snapshot on a {self.mode} topic or one not held")
            return
        if state.expect_snapshot != (seq, frame.get("epoch")):
            self.violation(
                f"{topic}: snapshot at ({frame.get('epoch')}, {seq}), "
                f"announced {state.expect_snapshot}"
            )
        state.expect_snapshot = None
        state.seq, state.epoch = seq, frame.get("epoch", state.epoch)
        if self.mode == "book":
            state.book = Book()
            self.apply_book(topic, state, frame)
        else:
            self.check_value(topic, seq, frame.get("data"))
            state.value = frame.get("data")

    def update(self, frame: dict[str, Any], now: float) -> None:
        self.tally.updates += 1
        topic, seq = frame["topic"], frame["seq"]
        state = self.topics.get(topic)
        if state is None:
            self.violation(f"{topic}: update of a topic not held")
            return
        if state.expect_snapshot is not None:
            self.violation(f"{topic}: update {seq} before the announced snapshot")
            state.expect_snapshot = None
        if "epoch" in frame:
            state.epoch = frame["epoch"]
        from_seq = frame.get("from_seq")
        if from_seq is not None:
            self.tally.conflated += 1
            self.tally.folded += seq - from_seq + 1
            if self.mode == "stream":
                self.violation(f"{topic}: conflated frame ({from_seq}..{seq}) on a stream")
            elif from_seq != state.seq + 1 or seq < from_seq:
                self.violation(f"{topic}: from_seq {from_seq}..{seq} after seq {state.seq}")
        elif seq != state.seq + 1:
            self.violation(f"{topic}: seq {seq} after {state.seq}")
        state.seq = seq
        state.frames += 1
        if state.frames == 1:
            state.first_at = now
        state.last_at = now
        if self.mode == "book":
            if state.book is None:
                state.book = Book()
            self.apply_book(topic, state, frame)
        elif self.mode == "last":
            self.check_value(topic, seq, frame.get("data"))
            state.value = frame.get("data")
        else:
            state.counts[seq] += 1
            self.check_value(topic, seq, frame.get("data"))

    def apply_book(self, topic: str, state: TopicState, frame: dict[str, Any]) -> None:
        assert state.book is not None
        seq = frame["seq"]
        try:
            delta, crc = read_data(frame.get("data"))
        except InvalidDelta as exc:
            self.violation(f"{topic} seq {seq}: bad book data: {exc}")
            return
        state.book.apply(delta)
        if crc is None:
            self.violation(f"{topic} seq {seq}: no checksum")
            return
        self.tally.checksums += 1
        own = state.book.checksum()
        if crc != own:
            self.violation(f"{topic} seq {seq}: checksum {crc}, the book applied gives {own}")
        expected = self._reference_at(self.reference.checksums.get(topic, []), seq)
        if crc != expected:
            self.violation(f"{topic} seq {seq}: checksum {crc}, the reference's is {expected}")

    def check_value(self, topic: str, seq: int, data: Any) -> None:
        values = self.reference.values.get((self.channel, topic), [])
        expected = self._reference_at(values, seq)
        if data != expected:
            self.violation(f"{topic} seq {seq}: data {data!r}, published {expected!r}")

    @staticmethod
    def _reference_at(values: list[Any], seq: int) -> Any:
        return values[seq] if 0 < seq < len(values) else "(no such seq)"

    def closed(self, code: int | None) -> None:
        if code == 1013:
            self.tally.cuts += 1

    # -- the end ------------------------------------------------------------------------------

    def done(self) -> bool:
        """Whether every topic stands at the reference's final seq."""
        final = self.reference.final_seq
        return all(
            s.seq == final(self.channel, t) and s.expect_snapshot is None
            for t, s in self.topics.items()
        )

    def finish(self, max_rate: float | None = None) -> None:
        """The end-state checks (and, with ``max_rate``, the frame count per topic)."""
        reference = self.reference
        for topic, state in self.topics.items():
            final = reference.final_seq(self.channel, topic)
            if state.seq != final:
                self.violation(f"{topic}: ended at seq {state.seq}, the feed's last is {final}")
            if self.mode == "book":
                expected = reference.books[topic]
                book = state.book or Book()
                if (book.bids.levels(), book.asks.levels()) != (
                    expected.bids.levels(),
                    expected.asks.levels(),
                ):
                    self.violation(f"{topic}: the book differs from the reference's")
            elif self.mode == "last":
                values = reference.values[(self.channel, topic)]
                if state.value != values[-1]:
                    self.violation(f"{topic}: holds {state.value!r}, the last is {values[-1]!r}")
            else:
                missing = [s for s in range(state.first, final + 1) if state.counts[s] == 0]
                twice = sorted(s for s, n in state.counts.items() if n > 1)
                if missing:
                    self.violation(f"{topic}: {len(missing)} seqs missing, first {missing[:5]}")
                if twice:
                    self.violation(f"{topic}: {len(twice)} seqs twice or more, {twice[:5]}")
            if max_rate is not None and state.frames:
                # The gateway sends at most max_rate a second; allow a second of bunching at
                # the receiving end (this process may be late reading).
                span = state.last_at - state.first_at
                allowed = int(max_rate * (span + 1.0)) + 1
                if state.frames > allowed:
                    self.violation(
                        f"{topic}: {state.frames} update frames in {span:.1f} s "
                        f"at max_rate {max_rate:g} (at most {allowed})"
                    )
