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
@pytest.mark.parametrize("since", [None, T0 - 100.0])
def test_at_or_under_the_limit_a_client_is_kept_however_long_it_lagged(
    pending: int, since: float | None
) -> None:
    assert RULE.judge(pending, since, T0) is Verdict.KEEP


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
