"""Client text on its way into a log line: escaped, so that it cannot forge one; and
client-caused error lines: throttled, so that they cannot flood the log.

A request path is percent-decoded before a handler sees it: ``/x%0d%0aINFO ...`` would put
a line break, and with it a forged log line, into a plain-text log; ``%1b[...`` would drive
the terminal that shows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from .ratelimit import LogThrottle

#: Seconds between two lines of one kind from :class:`ThrottledLog`.
ERROR_LOG_INTERVAL = 10.0

_QUOTES = frozenset('"\\')


def escape(text: str) -> str:
    """``text`` with every character a log line must not carry as it is written ``\\xHH``,
    ``\\uHHHH`` or ``\\UHHHHHHHH``: C0 and C1 controls (CR, LF, ESC, NEL ...), DEL, other
    non-printable characters (U+2028 line separator, bidirectional overrides), the double
    quote that delimits fields, and the backslash (so that an escape cannot be forged)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the common case costs two scans in C
    return "".join(_escape_char(c) if c in _QUOTES or not c.isprintable() else c for c in text)


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class ThrottledLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, at most one line per message per ``interval``.

    aiohttp logs every malformed request ("Error handling request from ...") at ERROR with a
    traceback of about ten lines: any client could fill the disk with them. Each message
    (its format string) gets one line per interval; the next one that is written says how
    many were held back. Handed to aiohttp as the request handler's ``logger``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = ERROR_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self._throttle = LogThrottle(interval)
        self._clock = clock

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level < logging.WARNING or not self.isEnabledFor(level):
            super().log(level, msg, *args, **kwargs)
            return
        more = self._throttle.note(str(msg), self._clock())
        if more is not None:
            super().log(level, f"{msg}{more}", *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs
