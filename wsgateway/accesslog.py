"""What the access log says, and at which level (the decisions; web.py writes the lines).

- An HTTP request: one line, ``client "METHOD path" status duration``, at INFO, except what
  a monitor fetches again and again (the status page and its poll of ``/api/ws/metrics``
  every second, Prometheus scrapes, a load balancer's ``/healthz``/``/readyz`` probes): at
  DEBUG, a ``/readyz`` 503 during a drain included (the drain logs itself). One open status
  page alone wrote a line a second at INFO. A 404 stays at INFO: a monitor that polls a
  path this listener does not serve (``/metrics`` with ``metrics_port`` set) is misconfigured.
- A WebSocket session: nothing at its upgrade (a ``101`` after a few milliseconds says
  nothing about the session), one line when it ends: how long it lasted, the close code and
  why it ended (a ``wsgateway_disconnects_total`` reason, which says who closed it), and
  the frames it received and was sent.

Both go to the listener's access logger (``aiohttp.access`` unless the runner is given
another; none when it is given ``access_log=None``): one log to route, and the session line
starts like the request line (client, ``"GET /ws/{channel}"``, 101) so that one pattern
reads both.
"""

from __future__ import annotations

import logging

from .logtext import escape

#: Paths a monitor polls: their GET and HEAD requests are logged at DEBUG.
POLLED_PATHS = frozenset({"/", "/metrics", "/api/ws/metrics", "/healthz", "/readyz"})
_READS = frozenset({"GET", "HEAD"})
#: The close code of a session that ended without a close frame (RFC 6455, 7.1.5).
NO_CLOSE_FRAME = 1006


def request_level(method: str, path: str, status: int) -> int | None:
    """The level of the access-log line of one HTTP request; None: no line here (an
    answered WebSocket upgrade, whose session gets its own line when it ends)."""
    if status == 101:
        return None
    if path in POLLED_PATHS and method in _READS and status != 404:
        return logging.DEBUG
    return logging.INFO


def close_code(sent: int | None, seen: int | None) -> int:
    """The close code a session ended with: the one the gateway sent when it closed the
    session (``sent``), else the one aiohttp saw or sent (``seen``: the client's, or the
    1009/1007/1002 aiohttp answered a bad frame with), else 1006 (no close frame at all)."""
    if sent is not None:
        return sent
    return seen if seen else NO_CLOSE_FRAME


def log_session(
    logger: logging.Logger,
    client: str,
    channel: str,
    seconds: float,
    code: int,
    reason: str,
    frames_in: int,
    frames_out: int,
) -> None:
    """The one INFO line of a WebSocket session, written when it ends. ``frames_in``: text,
    binary, ping and pong frames from the client (not its close frame); ``frames_out``:
    every frame the gateway queued and wrote (updates, replies, pongs; not aiohttp's
    heartbeat pings or the close frame)."""
    logger.info(
        '%s "GET /ws/%s" 101 session %.3fs close %d %s frames in %d out %d',
        escape(client),
        escape(channel),
        seconds,
        code,
        reason,
        frames_in,
        frames_out,
    )
