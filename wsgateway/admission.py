"""Admission: who may open a connection on one channel. Pure: a clock and a random source
are injected, so tests drive both.

Four limits, checked in this order before the WebSocket upgrade:

1. ``max_connections``: open connections plus reservations (upgrades in progress); 503.
2. ``max_connections_per_ip``: open connections plus reservations of one client address; 429.
3. ``connections_per_minute``: admissions of one client address in any 60 s (sliding
   window); 429 + ``Retry-After`` (the time until the window has room).
4. ``handshakes_per_second``: admissions of the whole channel (a token bucket that holds
   up to ``handshake_burst``); 429 + a jittered ``Retry-After``. This one guards the
   process, not fairness: one address cannot use more than its own minute's budget, so a
   client that connects and disconnects in a loop no longer keeps everyone else out.

Per-address limits key an IPv4 address by itself and an IPv6 address by its /64: one host
(one home line, one phone, one VM) is routinely given a whole /64 and can pick a new
address from it for every connection. IPv4-mapped IPv6 (``::ffff:a.b.c.d``, what a
dual-stack listener reports for an IPv4 peer) counts as the IPv4 address. A value that is
not an IP address (``unknown``, a proxy's obfuscated id) is its own key.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import random as random_module
from collections import OrderedDict
from collections.abc import Callable

from .errors import (
    ChannelFull,
    ConnectionRateLimited,
    HandshakeRateLimited,
    TooManyConnectionsFromAddress,
)
from .ratelimit import AddressCounter, SlidingWindow, TokenBucket
from .settings import Limits

#: The connection-rate window: ``connections_per_minute`` counts admissions in 60 s.
WINDOW_SECONDS = 60.0
#: The longest Retry-After a client refused by the handshake budget is given (see
#: Admission._retry_after): an attacker's refused handshakes cannot push honest clients
#: further out than this.
MAX_HANDSHAKE_RETRY = 30


def address_key(address: str) -> str:
    """The key under which per-address limits count ``address`` (see the module docstring)."""
    if ":" not in address:
        return address  # IPv4 as the socket (or a trusted proxy, via ip_address) wrote it
    return _ipv6_key(address)


@functools.lru_cache(maxsize=4096)  # the same addresses connect again and again
def _ipv6_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Admission:
    """The admission state of one channel: reservations, per-address counts and windows,
    and the channel's handshake budget.

    A place is reserved by :meth:`admit`, then either given back by :meth:`release` (the
    upgrade failed) or turned into a connection by :meth:`opened`; a connection's place is
    given back by :meth:`closed`.
    """

    def __init__(
        self,
        name: str,
        limits: Limits,
        *,
        clock: Callable[[], float],
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.name = name
        self.limits = limits
        self._clock = clock
        self._random = random
        self.admitting = 0  # reserved, handshake not finished yet: counts against capacity
        self._open = AddressCounter()  # open connections and reservations per address key
        # Per-address connection-rate windows, least recently admitted first. An address
        # whose newest admission is older than the window has an empty window and is
        # forgotten (swept from the front on every admission). Every entry of every window
        # took a handshake token, so all windows together hold at most
        # handshake_burst + 60 * handshakes_per_second entries, for at most as many
        # addresses: what bounds this map, however many addresses an attacker has.
        self._windows: OrderedDict[str, tuple[SlidingWindow, float]] = OrderedDict()
        self._handshakes = TokenBucket(
            limits.handshakes_per_second, limits.handshake_burst, clock()
        )
        self._horizon = clock()  # the latest return time handed out (see _retry_after)

    def admit(self, address: str, connections: int) -> None:
        """Reserve a place for ``address`` on a channel with ``connections`` open ones, or
        raise the :class:`~wsgateway.errors.Rejected` that says why not."""
        limits = self.limits
        if connections + self.admitting >= limits.max_connections:
            raise ChannelFull(
                f"channel {self.name!r} is at max_connections ({limits.max_connections})"
            )
        key = address_key(address)
        if self._open.count(key) >= limits.max_connections_per_ip:
            raise TooManyConnectionsFromAddress(
                f"at most {limits.max_connections_per_ip} connections per address"
            )
        now = self._clock()
        self._sweep(now)
        entry = self._windows.get(key)
        window = entry[0] if entry is not None else None
        # Checked before the handshake budget and recorded after it: a refused address
        # spends no token, and a handshake refused for the budget costs no place in the
        # address's window.
        if window is not None and window.count(now) >= limits.connections_per_minute:
            raise ConnectionRateLimited(
                f"at most {limits.connections_per_minute} connections per minute per address",
                window.retry_after(now),
            )
        if not self._handshakes.try_take(now):
            raise HandshakeRateLimited(
                f"over {limits.handshakes_per_second} new connections per second; "
                "retry after the Retry-After seconds",
                self._retry_after(now),
            )
        if window is None:
            window = SlidingWindow(limits.connections_per_minute, WINDOW_SECONDS)
        else:
            del self._windows[key]  # re-inserted at the end: the most recently admitted
        window.try_acquire(now)  # has room: counted above
        self._windows[key] = (window, now)
        self.admitting += 1
        self._open.add(key)

    def _retry_after(self, now: float) -> int:
        """Whole seconds a client refused by the handshake budget should wait.

        Each refused client is given the next free slot of the budget after the ones
        already handed out (``_horizon`` moves on by 1/rate per refusal), plus up to one
        second at random: a herd of 10,000 refused in the same second is told to come back
        spread over the next ten, about ``handshakes_per_second`` per second, instead of
        all at once (to be refused together again). The horizon stops at
        MAX_HANDSHAKE_RETRY seconds ahead, so a flood of refused handshakes cannot push
        honest clients further out than that.
        """
        slot = max(self._horizon, now) + 1.0 / self.limits.handshakes_per_second
        if slot - now < MAX_HANDSHAKE_RETRY:
            self._horizon = slot
        wait = min(slot - now, MAX_HANDSHAKE_RETRY - 1) + self._random()
        return max(1, math.ceil(wait))

    def _sweep(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        windows = self._windows
        while windows:
            key, (_, newest) = next(iter(windows.items()))
            if newest > horizon:
                return
            del windows[key]  # its newest admission has left the window: it is empty

    def opened(self) -> None:
        """A reservation became an open connection (its address keeps counting)."""
        self.admitting -= 1

    def release(self, address: str) -> None:
        """Give back a reservation whose upgrade did not complete."""
        self.admitting -= 1
        self._open.remove(address_key(address))

    def closed(self, address: str) -> None:
        """Give back the place of an open connection from ``address``."""
        self._open.remove(address_key(address))

    def addresses(self) -> int:
        """Addresses holding an open connection or a reservation."""
        return len(self._open)

    def windows(self) -> int:
        """Addresses with a connection-rate window (admitted within the last 60 s, give or
        take the sweep, which runs at the next admission)."""
        return len(self._windows)

    def recent(self) -> int:
        """Admissions of the last 60 s over all addresses."""
        now = self._clock()
        return sum(window.count(now) for window, _ in self._windows.values())
