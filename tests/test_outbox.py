"""The slow-consumer rule (outbox.py): pure, on plain numbers and a clock value."""

from __future__ import annotations

import pytest

from wsgateway.outbox import (
    HARD_CAP_FACTOR,
    MIN_INTERVAL,
    SLICES,
    Course,
    SlowConsumerRule,
    Verdict,
)

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


# -- on course: is a lagging client worth the relay's wait? -----------------------------------
#
# RULE: limit 1024, resume 512, grace 2 s. With 2048 pending at the start of its lag it owes
# 1536 bytes within 2 s: 768 B/s, 3.84 bytes per 5 ms check.

CHECK = 0.005


def test_a_client_draining_fast_enough_is_waited_for() -> None:
    assert RULE.on_course(2048, 4, CHECK, 0.0)  # 800 B/s
    assert RULE.on_course(2048, 768, 1.0, 0.0)  # exactly on course
    assert RULE.on_course(1024, 256, 0.5, 1.0)  # 512 owed in the 1 s left: 512 B/s


@pytest.mark.parametrize(
    ("taken", "elapsed", "lagged_for"),
    [
        (0, CHECK, 0.0),  # stopped
        (0, 1.0, 0.5),
        (3, CHECK, 0.0),  # a trickle: 600 B/s where 768 are owed
        (767, 1.0, 0.0),
        (255, 0.5, 1.0),
    ],
)
def test_a_stopped_or_trickling_client_is_not_waited_for(
    taken: int, elapsed: float, lagged_for: float
) -> None:
    pending = 1024 if lagged_for == 1.0 else 2048
    assert not RULE.on_course(pending, taken, elapsed, lagged_for)


def test_a_client_that_caught_up_is_on_course_and_one_whose_grace_is_over_is_not() -> None:
    assert RULE.on_course(512, 0, CHECK, 1.9)
    assert not RULE.on_course(513, 10**9, CHECK, 2.0)
    assert not RULE.on_course(2048, 10**9, 0.0, 0.0)  # no time, no rate


def test_a_new_lagging_client_is_waited_for_until_its_first_measurement() -> None:
    start = Course(T0, taken=5000)
    assert start.wait
    # Too soon to measure: the decision and the reference point stay.
    assert RULE.follow(start, 2048, 5000, T0, T0 + MIN_INTERVAL / 2) is start
    stopped = RULE.follow(start, 2048, 5000, T0, T0 + CHECK)
    assert stopped == Course(T0 + CHECK, 5000, wait=False)
    draining = RULE.follow(start, 2040, 5008, T0, T0 + CHECK)
    assert draining == Course(T0 + CHECK, 5008, wait=True)


def test_a_draining_client_that_slows_down_stops_being_waited_for() -> None:
    clock, taken, pending = T0, 0, 2048
    course = Course(clock, taken)
    for _ in range(10):  # 1000 B/s, for 50 ms
        clock += CHECK
        taken += 5
        pending -= 5
        course = RULE.follow(course, pending, taken, T0, clock)
        assert course.wait
    clock += CHECK
    taken += 1  # 200 B/s: the average over its lag is still above 768 B/s; the last check not
    pending -= 1
    course = RULE.follow(course, pending, taken, T0, clock)
    assert not course.wait
    clock += CHECK
    taken += 5  # and fast again: waited for again
    pending -= 5
    assert RULE.follow(course, pending, taken, T0, clock).wait


def test_the_rate_owed_rises_as_the_grace_runs_out() -> None:
    # The same 400 B/s is on course with 1.5 s left for 600 bytes, not with 1 s left.
    assert RULE.on_course(1112, 200, 0.5, 0.5)
    assert not RULE.on_course(1112, 200, 0.5, 1.0)


def test_on_course_at_its_exact_bounds() -> None:
    # Grace 2 s, resume 512 bytes.
    assert not RULE.on_course(2048, 10**9, CHECK, 2.0)  # no time left: cut, not waited for
    assert RULE.on_course(2048, 10**9, CHECK, 1.999)
    assert RULE.on_course(512, 0, CHECK, 1.0)  # exactly back at resume: caught up
    assert RULE.on_course(512, 0, 0.0, 1.0)  # caught up needs no measurement
    assert not RULE.on_course(500, 0, CHECK, 2.0)  # grace over: nothing more to wait for
    assert not RULE.on_course(513, 0, CHECK, 1.0)  # one byte owed and nothing taken
    # Exactly the rate owed: 512 bytes owed over the 1 s left, 5.12 bytes in 10 ms.
    assert RULE.on_course(1024, 512, 1.0, 1.0)
    assert not RULE.on_course(1024, 511, 1.0, 1.0)


def test_a_measurement_needs_exactly_min_interval() -> None:
    start = Course(0.0, taken=0)  # at 0.0, so that the interval is exact in floating point
    assert RULE.follow(start, 2048, 0, 0.0, MIN_INTERVAL) == Course(MIN_INTERVAL, 0, wait=False)
