"""The slow-consumer rule (outbox.py): pure, on plain numbers and a clock value."""

from __future__ import annotations

import pytest

from wsgateway.outbox import HARD_CAP_FACTOR, SLICES, SlowConsumerRule, Verdict

RULE = SlowConsumerRule(limit=1024, grace=2.0)
T0 = 1000.0


def test_bounds_follow_the_limit() -> None:
    assert RULE.hard_cap == HARD_CAP_FACTOR * 1024 == 2048
    assert RULE.slice_bytes == 1024 // SLICES == 256
    assert SlowConsumerRule(limit=3, grace=0.0).slice_bytes == 1  # never a zero slice


@pytest.mark.parametrize("pending", [0, 1, 1023, 1024])
def test_at_or_under_the_limit_a_client_that_did_not_lag_is_kept(pending: int) -> None:
    assert RULE.judge(pending, None, T0) is Verdict.KEEP


@pytest.mark.parametrize("since", [T0, T0 - 100.0])
def test_a_lagging_client_stops_lagging_only_at_half_the_limit(since: float) -> None:
    assert RULE.resume == 512
    assert RULE.judge(512, since, T0) is Verdict.KEEP
    assert RULE.judge(0, since, T0) is Verdict.KEEP
    # Under the limit but above half of it, it still lags: taking a byte now and then
    # does not hold the relay, and so the whole feed, at a trickle's pace.
    assert RULE.judge(513, T0, T0 + 1.0) is Verdict.LAG
    assert RULE.judge(1024, T0, T0 + 1.0) is Verdict.LAG
    assert RULE.judge(513, T0, T0 + 2.0) is Verdict.CUT


@pytest.mark.parametrize("pending", [1025, 2048, 10_000_000])
def test_over_the_limit_a_client_lags_until_its_grace_has_run_out(pending: int) -> None:
    assert RULE.judge(pending, None, T0) is Verdict.LAG  # it starts lagging now
    assert RULE.judge(pending, T0, T0) is Verdict.LAG
    assert RULE.judge(pending, T0, T0 + 1.999) is Verdict.LAG
    assert RULE.judge(pending, T0, T0 + 2.0) is Verdict.CUT
    assert RULE.judge(pending, T0, T0 + 50.0) is Verdict.CUT


def test_a_grace_of_zero_cuts_at_the_first_judgement_after_the_lag_began() -> None:
    rule = SlowConsumerRule(limit=1024, grace=0.0)
    assert rule.judge(1025, None, T0) is Verdict.LAG
    assert rule.judge(1025, T0, T0) is Verdict.CUT


@pytest.mark.parametrize(
    ("pending", "size", "admitted"),
    [
        (0, 10_000_000, True),  # nothing pending: any frame, however large
        (1, 2047, True),  # exactly at the hard cap
        (1, 2048, False),
        (2048, 1, False),
        (1500, 100, True),  # over the limit but under the cap: it lags, it is not cut
    ],
)
def test_only_a_frame_past_the_hard_cap_is_refused(pending: int, size: int, admitted: bool) -> None:
    assert RULE.admits(pending, size) is admitted
