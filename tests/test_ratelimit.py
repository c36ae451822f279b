"""Unit tests for wsgateway.ratelimit, driven by a fake clock (times passed as numbers)."""

from __future__ import annotations

import pytest

from wsgateway.ratelimit import (
    AddressCounter,
    LogThrottle,
    SlidingWindow,
    StrikeCounter,
    TokenBucket,
)

# -- TokenBucket ------------------------------------------------------------------------------


def test_token_bucket_starts_full_and_allows_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=5.0, now=100.0)
    assert [bucket.try_take(100.0) for _ in range(5)] == [True] * 5
    assert bucket.try_take(100.0) is False
    assert bucket.try_take(100.0) is False


def test_token_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    for _ in range(3):
        assert bucket.try_take(0.0)
    assert not bucket.try_take(0.0)
    assert not bucket.try_take(0.25)  # half a token
    assert bucket.try_take(0.5)  # one token after 0.5 s at 2/s
    assert not bucket.try_take(0.5)
    assert bucket.try_take(1.5)  # two more tokens
    assert bucket.try_take(1.5)
    assert not bucket.try_take(1.5)


def test_token_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=4.0, now=0.0)
    for _ in range(4):
        assert bucket.try_take(0.0)
    taken = [bucket.try_take(1000.0) for _ in range(10)]
    assert taken == [True] * 4 + [False] * 6


def test_token_bucket_failed_takes_do_not_consume() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
    assert bucket.try_take(0.0)
    for _ in range(100):
        assert not bucket.try_take(0.5)
    assert bucket.try_take(1.0)


def test_token_bucket_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert not bucket.try_take(10.5)
    assert bucket.try_take(11.0)


def test_token_bucket_wait_time() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    assert bucket.wait_time(0.0) == 0.0
    assert bucket.try_take(0.0)
    assert bucket.wait_time(0.0) == 0.0  # one token left
    assert bucket.try_take(0.0)
    assert bucket.wait_time(0.0) == 0.25  # a whole token at 4/s
    assert bucket.wait_time(0.125) == 0.125  # half of it came back
    assert bucket.wait_time(0.25) == 0.0
    assert bucket.try_take(0.25)


def test_token_bucket_wait_time_does_not_take() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
    for _ in range(3):
        assert bucket.wait_time(0.0) == 0.0
    assert bucket.try_take(0.0)
    assert not bucket.try_take(0.0)


# -- SlidingWindow ----------------------------------------------------------------------------


def test_sliding_window_admits_up_to_limit() -> None:
    window = SlidingWindow(limit=3, window=60.0)
    assert len(window) == 0
    assert window.try_acquire(0.0)
    assert window.try_acquire(10.0)
    assert window.try_acquire(20.0)
    assert len(window) == 3
    assert not window.try_acquire(30.0)
    assert not window.try_acquire(59.0)
    assert len(window) == 3  # refusals are not recorded


def test_sliding_window_entries_expire_after_the_window() -> None:
    window = SlidingWindow(limit=3, window=60.0)
    for t in (0.0, 10.0, 20.0):
        assert window.try_acquire(t)
    assert not window.try_acquire(59.999)
    # The event at 0 leaves the window at 60 exactly.
    assert window.try_acquire(60.0)
    assert len(window) == 3
    assert not window.try_acquire(69.0)
    assert window.try_acquire(70.0)


def test_sliding_window_refusals_do_not_extend_the_block() -> None:
    window = SlidingWindow(limit=1, window=10.0)
    assert window.try_acquire(0.0)
    for t in range(1, 10):
        assert not window.try_acquire(float(t))
    assert window.try_acquire(10.0)


def test_sliding_window_len_drops_back_to_zero() -> None:
    window = SlidingWindow(limit=5, window=60.0)
    for t in range(5):
        assert window.try_acquire(float(t))
    assert len(window) == 5
    assert window.retry_after(30.0) == 30
    assert len(window) == 5
    window.retry_after(62.0)  # events at 0, 1 and 2 are gone
    assert len(window) == 2
    window.retry_after(1000.0)
    assert len(window) == 0


def test_sliding_window_retry_after() -> None:
    window = SlidingWindow(limit=2, window=60.0)
    assert window.retry_after(0.0) == 1  # room now: at least 1
    assert window.try_acquire(0.5)
    assert window.retry_after(1.0) == 1
    assert window.try_acquire(10.0)
    assert window.retry_after(30.0) == 31  # ceil(0.5 + 60 - 30)
    assert window.retry_after(60.0) == 1  # ceil(0.5): at least 1
    assert window.retry_after(60.5) == 1  # the oldest expired: room again
    assert len(window) == 1


def test_sliding_window_retry_after_is_whole_seconds() -> None:
    window = SlidingWindow(limit=1, window=1.0)
    assert window.try_acquire(0.0)
    result = window.retry_after(0.1)
    assert result == 1
    assert isinstance(result, int)


# -- AddressCounter ---------------------------------------------------------------------------


def test_address_counter_counts_and_forgets_at_zero() -> None:
    counter = AddressCounter()
    assert counter.count("10.0.0.1") == 0
    assert len(counter) == 0
    counter.add("10.0.0.1")
    counter.add("10.0.0.1")
    counter.add("::1")
    assert counter.count("10.0.0.1") == 2
    assert counter.count("::1") == 1
    assert len(counter) == 2
    counter.remove("10.0.0.1")
    assert counter.count("10.0.0.1") == 1
    assert len(counter) == 2
    counter.remove("10.0.0.1")
    assert counter.count("10.0.0.1") == 0
    assert len(counter) == 1
    counter.remove("::1")
    assert len(counter) == 0


def test_address_counter_remove_unknown_does_not_go_negative() -> None:
    counter = AddressCounter()
    counter.remove("10.0.0.9")
    assert counter.count("10.0.0.9") == 0
    assert len(counter) == 0
    counter.add("10.0.0.9")
    assert counter.count("10.0.0.9") == 1


# -- StrikeCounter ----------------------------------------------------------------------------


def test_strike_counter_limit_strikes_within_window_is_out() -> None:
    strikes = StrikeCounter(limit=3, window=10.0)
    assert strikes.strike(0.0) is False
    assert strikes.strike(1.0) is False
    assert strikes.strike(2.0) is True
    assert strikes.strike(3.0) is True


def test_strike_counter_forgets_old_strikes() -> None:
    strikes = StrikeCounter(limit=3, window=10.0)
    assert not strikes.strike(0.0)
    assert not strikes.strike(5.0)
    assert not strikes.strike(10.0)  # the strike at 0 has left the window
    assert strikes.strike(14.0)


def test_strike_counter_limit_one_is_out_at_once() -> None:
    assert StrikeCounter(limit=1, window=10.0).strike(0.0) is True


# -- LogThrottle ------------------------------------------------------------------------------


def test_log_throttle_counts_suppressed_lines() -> None:
    throttle = LogThrottle(interval=10.0)
    assert throttle.allow("reject", 0.0) == 0
    assert throttle.allow("reject", 1.0) is None
    assert throttle.allow("reject", 5.0) is None
    assert throttle.allow("reject", 9.999) is None
    assert throttle.allow("reject", 10.0) == 3
    assert throttle.allow("reject", 11.0) is None
    assert throttle.allow("reject", 25.0) == 1
    assert throttle.allow("reject", 40.0) == 0


def test_log_throttle_keys_are_independent() -> None:
    throttle = LogThrottle(interval=60.0)
    assert throttle.allow("a", 0.0) == 0
    assert throttle.allow("b", 1.0) == 0
    assert throttle.allow("a", 2.0) is None
    assert throttle.allow("a", 3.0) is None
    assert throttle.allow("b", 4.0) is None
    assert throttle.allow("b", 61.0) == 1
    assert throttle.allow("a", 61.0) == 2


@pytest.mark.parametrize("interval", [0.0, 1.0])
def test_log_throttle_first_line_always_passes(interval: float) -> None:
    throttle = LogThrottle(interval=interval)
    assert throttle.allow("k", -1000.0) == 0


def test_log_throttle_note_says_how_many_lines_it_held_back() -> None:
    throttle = LogThrottle(10.0)
    assert throttle.note("capacity", 0.0) == ""
    assert throttle.note("capacity", 1.0) is None
    assert throttle.note("capacity", 2.0) is None
    assert throttle.note("capacity", 10.0) == " (2 more since the last line)"
    assert throttle.note("ip_limit", 10.0) == ""
