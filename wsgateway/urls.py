"""The gateway's address as the client commands take it (``--url``). Pure.

An operator pastes whatever URL is at hand: the base (``http://host:port``), the publish
endpoint, a WebSocket URL with its channel, with or without a trailing slash. Each command
needs the base and appends its own path, so the known endpoint paths are taken off first
(else ``--url http://h:8080/api/publish`` became ``.../api/publish/api/publish``). A path
before them is kept: a reverse proxy may serve the gateway under a prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError

_HTTP_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_SCHEME = {"http": "ws", "https": "wss"}
# The gateway's own paths, which a pasted URL may end with (web.py's routes).
_ENDPOINT = re.compile(
    r"(?P<endpoint>/api/publish|/api/ws/metrics|/api/drain|/api|/metrics|/healthz|/readyz"
    r"|/ws/(?P<channel>[^/]+)|/ws)$"
)


@dataclass(frozen=True, slots=True)
class GatewayUrl:
    """``base``: ``http(s)://host[:port][/prefix]`` without a trailing slash; ``channel``:
    the channel the given URL named (``.../ws/ticker``), else None."""

    base: str
    channel: str | None = None

    def http(self, path: str) -> str:
        return self.base + path

    def ws(self, path: str) -> str:
        scheme, rest = self.base.split("://", 1)
        return f"{_WS_SCHEME[scheme]}://{rest}{path}"


def gateway_url(url: str) -> GatewayUrl:
    """Normalise a ``--url``; raise :class:`UsageError` for what cannot be a gateway."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text  # 127.0.0.1:8080
    parts = urlsplit(text)
    scheme = _HTTP_SCHEME.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise UsageError(
            f"--url {url!r}: expected http://HOST:PORT (or https://, ws://, wss://), "
            "e.g. http://127.0.0.1:8080"
        )
    if parts.query or parts.fragment:
        raise UsageError(f"--url {url!r}: expected no query or fragment (?... #...)")
    path = parts.path.rstrip("/")
    channel = None
    match = _ENDPOINT.search(path)
    if match:
        channel = match.group("channel")
        path = path[: match.start()]
    return GatewayUrl(urlunsplit((scheme, parts.netloc, path, "", "")), channel)
