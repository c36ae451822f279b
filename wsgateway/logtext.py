"""Client text on its way into a log line: escaped, so that it cannot forge one.

A request path is percent-decoded before a handler sees it: ``/x%0d%0aINFO ...`` would put
a line break, and with it a forged log line, into a plain-text log; ``%1b[...`` would drive
the terminal that shows it. Pure, no I/O.
"""

from __future__ import annotations

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
