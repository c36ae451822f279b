"""Minting the ``user`` channel's JWTs (``wsgateway token``). Pure, no I/O.

A minted token is checked with the gateway's own :func:`~wsgateway.auth.verify_user_token`
under the same settings before it is handed out, so that a token this command prints is one
the gateway accepts (``aud``/``iss`` when configured, ``max_token_lifetime``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import jwt
import orjson

from .auth import EXPIRY_HORIZON, verify_user_token
from .errors import Unauthorized, UsageError
from .protocol import is_valid_topic
from .settings import Settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw]?)")
#: Claims the command sets itself: a --claim must not contradict --sub, --ttl or the settings.
RESERVED_CLAIMS = frozenset({"sub", "exp", "iat", "nbf", "aud", "iss"})


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``15m``, ``1h``, ``7d``, ``2w`` or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0
    if not 0 < seconds <= EXPIRY_HORIZON:
        raise UsageError(
            f"--ttl {text!r}: expected a duration like 30s, 15m, 1h or 7d "
            f"(at most {EXPIRY_HORIZON // 86400} days)"
        )
    return seconds


def parse_claim(text: str) -> tuple[str, Any]:
    """``--claim key=value``: the value as JSON when it is JSON (``admin=true``, ``n=3``,
    ``roles=["a"]``), else as a string (``plan=pro``)."""
    key, equals, raw = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise UsageError(f"--claim {text!r}: expected KEY=VALUE, e.g. --claim plan=pro")
    if key in RESERVED_CLAIMS:
        raise UsageError(
            f"--claim {key}: set by the command (sub: --sub, exp: --ttl, aud/iss: the "
            "jwt_audience/jwt_issuer settings)"
        )
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return key, raw


def mint_user_token(
    settings: Settings,
    subject: str,
    ttl: int,
    *,
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 JWT for ``subject`` valid ``ttl`` seconds, which ``settings``' gateway accepts."""
    if settings.jwt_secret is None:
        raise UsageError(
            "no jwt_secret is configured: set it in the config file (--config or "
            "WSGATEWAY_CONFIG) or in WSGATEWAY_JWT_SECRET; `wsgateway config init` writes one"
        )
    if not is_valid_topic(subject, allow_wildcard=False):
        raise UsageError(
            f"--sub {subject!r}: a user id is 1-64 characters of A-Z a-z 0-9 . _ - : / "
            "(it is the user's topic on the user channel)"
        )
    limit = settings.max_token_lifetime
    if limit is not None and ttl > limit:
        raise UsageError(
            f"--ttl {ttl}s: longer than this gateway's max_token_lifetime ({limit}s), "
            "which would refuse the token"
        )
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {**(claims or {}), "sub": subject, "iat": issued}
    payload["exp"] = issued + ttl
    if settings.jwt_audience is not None:
        payload["aud"] = settings.jwt_audience
    if settings.jwt_issuer is not None:
        payload["iss"] = settings.jwt_issuer
    token = jwt.encode(payload, settings.jwt_secret, algorithm="HS256")
    try:  # the gateway's own check, so that a token printed is a token accepted
        verify_user_token(
            token,
            settings.jwt_secret,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            max_lifetime=settings.max_token_lifetime,
            now=issued,
        )
    except Unauthorized as exc:  # a bug here rather than a mistake of the user
        raise UsageError(f"the minted token would be refused: {exc.message}") from None
    return token
