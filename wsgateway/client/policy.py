"""When the client reconnects, resends or gives up. Pure: the random source is passed in.

One table of the protocol's refusals and close codes (docs/protocol.md), read the way a
client must read it: what retrying can change (capacity, rate limits, a drain, a lost
network) is retried, honouring the gateway's ``Retry-After``; what it cannot (an unknown
channel, a bad token, a topic the gateway will never take) stops the client with an
exception, so a mistake never turns into an endless reconnect loop.
"""

from __future__ import annotations

from collections.abc import Callable

from .events import ClientStopped, ClosedByGateway, ConnectRefused, SubscribeRefused, TokenExpired

#: A connection that lived this long was a success: the next reconnect starts from the
#: initial delay again instead of where the last outage left the backoff.
STABLE_SECONDS = 10.0

#: Close codes after which reconnecting at once is right: the node is going away (1001
#: shutdown, 1012 drain) and the client should move to another one now, jittered so that
#: the clients of a node do not all arrive in the same instant.
MOVE_ON = frozenset({1001, 1012})
#: Close codes that reconnecting would only repeat: the client sent a frame the gateway
#: never takes (1003 binary, 1007 bad UTF-8, 1009 too large) or was cut for its behaviour
#: or its token (1008).
FINAL = frozenset({1003, 1007, 1008, 1009})
#: HTTP refusals of the upgrade that may end by waiting: rate limits, capacity, a drain.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: ``error`` codes answering a subscribe that a resend later may cure.
RETRYABLE_ERRORS = frozenset({"rate_limited", "unavailable"})


class Backoff:
    """Delays between attempts: ``initial`` doubling up to ``maximum``, each plus a random
    fraction of itself (so between d and 2d), so that many clients dropped together come
    back spread out."""

    def __init__(self, initial: float, maximum: float, random: Callable[[], float]) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff must be 0 < initial <= maximum, got {(initial, maximum)}")
        self.initial, self.maximum, self.random = initial, maximum, random
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the following one."""
        base = min(self.maximum, self.initial * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 64)
        return float(base * (1 + self.random()))

    def soon(self) -> float:
        """A short jittered delay (0 to ``initial``) for moving to another node at once."""
        return self.initial * self.random()

    def reset(self) -> None:
        self.attempts = 0


def after_close(code: int | None, reason: str, backoff: Backoff) -> float:
    """The delay before reconnecting after the gateway (or the network) ended the
    connection; raise :class:`ClientStopped` when reconnecting would not help."""
    if code in FINAL:
        if code == 1008 and "expired" in reason:
            raise TokenExpired(code, reason)
        raise ClosedByGateway(code, reason)
    if code in MOVE_ON:
        return backoff.soon()
    return backoff.next()  # 1013 slow consumer, 1011, 1006 (no close frame), anything else


def after_refusal(
    url: str, status: int, error: str, message: str, retry_after: float | None, backoff: Backoff
) -> float:
    """The delay before trying the upgrade again, or :class:`ConnectRefused`."""
    if status not in RETRYABLE_STATUS:
        raise ConnectRefused(url, status, error, message)
    return honoured(retry_after, backoff)


def after_error(
    code: str, message: str, retry_after: float | None, topics: tuple[str, ...], backoff: Backoff
) -> float:
    """The delay before sending a refused subscribe again, or :class:`SubscribeRefused`."""
    if code not in RETRYABLE_ERRORS:
        raise SubscribeRefused(code, message, topics)
    return honoured(retry_after, backoff)


def honoured(retry_after: float | None, backoff: Backoff) -> float:
    """The gateway's ``Retry-After`` plus a little jitter; the backoff when it gave none."""
    if retry_after is None or retry_after < 0:
        return backoff.next()
    return retry_after + backoff.soon()


def retry_after_of(value: object) -> float | None:
    """A ``Retry-After`` header or ``retry_after`` field as seconds (None: absent or not a
    number; the HTTP-date form is not used by the gateway)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


__all__ = ["Backoff", "ClientStopped", "after_close", "after_error", "after_refusal"]
