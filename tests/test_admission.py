"""Admission on a fake clock: per-address rates, the channel's handshake budget, bounded state."""

from __future__ import annotations

import contextlib
import heapq
import random

import pytest

from wsgateway.admission import (
    MAX_HANDSHAKE_RETRY,
    WINDOW_SECONDS,
    Admission,
    address_key,
)
from wsgateway.errors import (
    ChannelFull,
    ConnectionRateLimited,
    HandshakeRateLimited,
    Rejected,
    TooManyConnectionsFromAddress,
)
from wsgateway.settings import Limits

from .fakes import FakeClock


def make(random_value: float = 0.0, **limits: int) -> tuple[Admission, FakeClock]:
    clock = FakeClock()
    return Admission("ticker", Limits(**limits), clock=clock, random=lambda: random_value), clock


def admit_and_close(admission: Admission, address: str) -> None:
    admission.admit(address, 0)
    admission.opened()
    admission.closed(address)


def test_one_address_hammering_connect_close_does_not_keep_another_out() -> None:
    admission, clock = make()
    admitted = 0
    for _ in range(1000):  # ten per second for 100 s
        clock.advance(0.1)
        try:
            admit_and_close(admission, "203.0.113.7")
            admitted += 1
        except ConnectionRateLimited:
            pass
    # The hammering address gets its own 60 per minute, no more...
    assert admitted == 120  # 60 in the first minute, 60 more as they leave the window
    # ...and another address is admitted at once.
    admit_and_close(admission, "198.51.100.1")


def test_the_window_counts_per_address_and_retry_after_names_when_it_has_room() -> None:
    admission, clock = make(connections_per_minute=2)
    t0 = clock.now
    admit_and_close(admission, "10.0.0.1")
    clock.set(t0 + 20)
    admit_and_close(admission, "10.0.0.1")
    with pytest.raises(ConnectionRateLimited) as caught:
        admission.admit("10.0.0.1", 0)
    assert (caught.value.status, caught.value.reason, caught.value.retry_after) == (
        429,
        "rate_limited",
        40,
    )
    assert caught.value.message == "at most 2 connections per minute per address"
    admit_and_close(admission, "10.0.0.2")
    clock.set(t0 + WINDOW_SECONDS)
    admit_and_close(admission, "10.0.0.1")  # the first admission has left the window


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack listener's IPv4 peer
        ("::1", "::/64"),
        ("unknown", "unknown"),
        ("_proxy-id", "_proxy-id"),
    ],
)
def test_address_key_is_the_ipv4_address_or_the_ipv6_64(address: str, key: str) -> None:
    assert address_key(address) == key


def test_addresses_of_one_ipv6_64_share_their_limits() -> None:
    admission, _clock = make(connections_per_minute=3, max_connections_per_ip=2)
    admission.admit("2001:db8:0:1::1", 0)
    admission.admit("2001:db8:0:1::2", 1)
    with pytest.raises(TooManyConnectionsFromAddress):
        admission.admit("2001:db8:0:1::3", 2)  # same /64: a host picking a fresh address
    admission.release("2001:db8:0:1::1")
    admission.admit("2001:db8:0:1::4", 1)
    admission.release("2001:db8:0:1::2")
    with pytest.raises(ConnectionRateLimited):
        admission.admit("2001:db8:0:1::5", 1)  # the /64's fourth admission this minute
    admission.admit("2001:db8:0:2::1", 1)  # the next /64 is another host


def test_capacity_and_per_address_count_include_reservations() -> None:
    admission, _clock = make(max_connections=3, max_connections_per_ip=2)
    admission.admit("10.0.0.1", 0)
    admission.admit("10.0.0.1", 0)
    with pytest.raises(TooManyConnectionsFromAddress) as caught:
        admission.admit("10.0.0.1", 0)
    assert (caught.value.status, caught.value.reason) == (429, "ip_limit")
    with pytest.raises(ChannelFull) as full:
        admission.admit("10.0.0.2", 1)  # one open + two reserved
    assert full.value.message == "channel 'ticker' is at max_connections (3)"
    admission.opened()
    admission.release("10.0.0.1")
    assert (admission.admitting, admission.addresses()) == (0, 1)
    admission.closed("10.0.0.1")
    assert admission.addresses() == 0


def test_handshake_budget_refuses_with_a_jittered_retry_after() -> None:
    # random() adds up to one second to the slot: 0 gives the slot's own second.
    for value, expected in ((0.0, 1), (0.999999, 2)):
        admission, clock = make(value, handshakes_per_second=10, handshake_burst=5)
        for i in range(5):
            admission.admit(f"10.0.0.{i}", 0)
        with pytest.raises(HandshakeRateLimited) as caught:
            admission.admit("10.0.1.1", 0)
        exc = caught.value
        assert (exc.status, exc.reason, exc.limit, exc.retry_after) == (
            429,
            "handshake_rate",
            "handshakes_per_second",
            expected,
        )
        clock.advance(0.11)  # one token at 10/s
        admission.admit("10.0.1.1", 0)


def test_a_refused_herd_is_told_to_come_back_spread_over_the_budget() -> None:
    admission, _clock = make(0.0, handshakes_per_second=10, handshake_burst=10)
    for i in range(10):
        admission.admit(f"10.0.0.{i}", 0)
    told = []
    for i in range(100):  # 100 more in the same instant
        with pytest.raises(HandshakeRateLimited) as caught:
            admission.admit(f"10.0.1.{i}", 0)
        told.append(caught.value.retry_after)
    # Ten per second of budget: ten are told 1 s, ten 2 s, ... ten 10 s.
    assert told == [1 + i // 10 for i in range(100)]


def test_a_flood_of_refusals_cannot_push_the_retry_after_past_its_cap() -> None:
    admission, _clock = make(0.999999, handshakes_per_second=1, handshake_burst=1)
    admission.admit("10.0.0.1", 0)
    told = set()
    for i in range(1000):
        with pytest.raises(HandshakeRateLimited) as caught:
            admission.admit(f"10.0.1.{i % 250}", 0)
        told.add(caught.value.retry_after)
    assert max(told) == MAX_HANDSHAKE_RETRY
    assert min(told) == 2


def test_refusals_spend_nothing_of_the_other_limit() -> None:
    admission, clock = make(connections_per_minute=1, handshakes_per_second=1, handshake_burst=2)
    admit_and_close(admission, "10.0.0.1")
    for _ in range(5):  # refused by its window: spends no handshake token
        with pytest.raises(ConnectionRateLimited):
            admission.admit("10.0.0.1", 0)
    admit_and_close(admission, "10.0.0.2")  # the second token is still there
    with pytest.raises(HandshakeRateLimited):
        admission.admit("10.0.0.3", 0)  # refused by the budget: takes no place in its window
    clock.advance(1.0)
    admit_and_close(admission, "10.0.0.3")
    assert admission.recent() == 3


def test_per_address_windows_are_forgotten_once_empty() -> None:
    admission, clock = make(handshakes_per_second=100_000, handshake_burst=100_000)
    for i in range(5000):  # an attacker with many addresses, once each
        admit_and_close(admission, f"10.{i // 250}.{i % 250}.1")
    assert admission.windows() == 5000
    assert admission.recent() == 5000
    clock.advance(WINDOW_SECONDS / 2)
    admit_and_close(admission, "192.0.2.1")
    assert admission.windows() == 5001  # all still inside the window
    clock.advance(WINDOW_SECONDS / 2)
    admit_and_close(admission, "192.0.2.2")
    assert admission.windows() == 2  # the 5000 are empty now, and gone
    assert admission.addresses() == 0
    clock.advance(WINDOW_SECONDS)
    assert admission.recent() == 0


def test_the_windows_are_bounded_by_the_handshake_budget() -> None:
    # Every window entry took a token: over any minute at most burst + 60 * rate of them,
    # however many addresses ask.
    admission, clock = make(handshakes_per_second=5, handshake_burst=10)
    for i in range(20_000):
        clock.advance(0.01)  # 100 new addresses per second for 200 s
        with contextlib.suppress(HandshakeRateLimited):
            admit_and_close(admission, f"2001:db8:{i:x}::1")
        assert admission.windows() <= 10 + 5 * (WINDOW_SECONDS + 1)
    assert admission.windows() >= 5 * (WINDOW_SECONDS - 1)


def reconnect_storm(clients: int, limits: Limits, seed: int = 7) -> float:
    """Seconds until ``clients`` dropped at once are all back, each honouring Retry-After
    (and arriving within the first second, as a real herd does)."""
    rng = random.Random(seed)
    clock = FakeClock()
    admission = Admission("ticker", limits, clock=clock, random=rng.random)
    start = clock.now
    arrivals = [(start + rng.random(), i) for i in range(clients)]
    heapq.heapify(arrivals)
    back = start
    open_connections = 0
    while arrivals:
        when, client = heapq.heappop(arrivals)
        clock.set(when)
        try:
            admission.admit(f"10.{client // 60_000}.{client // 250 % 240}.{client % 250}", 0)
        except Rejected as refusal:
            assert refusal.retry_after is not None
            heapq.heappush(arrivals, (when + refusal.retry_after, client))
            continue
        admission.opened()
        open_connections += 1
        back = when
    assert open_connections == clients
    return back - start


def test_ten_thousand_clients_dropped_at_once_are_back_in_about_ten_seconds() -> None:
    """The documented figure for the defaults (README: handshakes_per_second): N clients
    are back within N / handshakes_per_second + 1 s, each refused about once."""
    assert reconnect_storm(10_000, Limits()) <= 10_000 / 1000 + 1


def test_a_reconnect_storm_takes_about_clients_over_the_budget() -> None:
    took = reconnect_storm(5000, Limits(handshakes_per_second=500, handshake_burst=500))
    assert 5000 / 500 - 1 <= took <= 5000 / 500 + 1


def test_the_handshake_refusal_says_which_budget_and_when_to_come_back() -> None:
    # The message is the body of the 429 a refused client reads (web.py).
    admission, _clock = make(handshakes_per_second=5, handshake_burst=1)
    admission.admit("10.0.0.1", 0)
    with pytest.raises(HandshakeRateLimited) as caught:
        admission.admit("10.0.0.2", 0)
    assert caught.value.message == (
        "over 5 new connections per second; retry after the Retry-After seconds"
    )


def test_the_retry_horizon_stops_short_of_its_cap_and_time_brings_it_closer() -> None:
    # One handshake a second: the k-th refused client is given the slot k seconds ahead.
    admission, clock = make(0.0, handshakes_per_second=1, handshake_burst=1)
    admission.admit("10.0.0.1", 0)
    told = []
    for i in range(MAX_HANDSHAKE_RETRY + 2):
        with pytest.raises(HandshakeRateLimited) as caught:
            admission.admit(f"10.0.1.{i}", 0)
        told.append(caught.value.retry_after)
    cap = MAX_HANDSHAKE_RETRY - 1  # plus up to one second of jitter: never over the cap
    assert told == [min(k, cap) for k in range(1, MAX_HANDSHAKE_RETRY + 3)]

    # The flood filled the slots up to 29 s ahead; the 30th is not handed out, so two
    # seconds on (the token of that time taken) the next refused client is told 28 s.
    clock.advance(2.0)
    admission.admit("10.0.2.1", 0)
    with pytest.raises(HandshakeRateLimited) as caught:
        admission.admit("10.0.2.2", 0)
    assert caught.value.retry_after == cap - 1
