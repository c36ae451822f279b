"""Credentials: JWTs for private channels and the publish token. Pure, no I/O.

Tokens are never logged: errors say what is wrong with a token, never what it contains.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import time
from dataclasses import dataclass

import jwt

from .errors import (
    ForbiddenOrigin,
    PublishForbidden,
    PublishForbiddenHost,
    PublishForbiddenOrigin,
    PublishUnauthorized,
    PublishUnsupportedMediaType,
    Unauthorized,
)
from .protocol import is_valid_topic


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user: ``user`` is the JWT ``sub``; ``expires`` its ``exp``, or None
    when it has none or it lies beyond :data:`EXPIRY_HORIZON` (no connection lives as long)."""

    user: str
    expires: float | None


#: Seconds ahead beyond which an ``exp`` is treated as "never" (ten years): no timer is set
#: for it, and a huge ``exp`` (1e300, 10**400) is never turned into a float.
EXPIRY_HORIZON = 10 * 365 * 86400
# RFC 7519's NumericDate is a JSON number; PyJWT also takes numeric strings ("exp": "1e9"),
# which the gateway's expiry timer would not have seen.
_TIME_CLAIMS = ("exp", "nbf", "iat")


def verify_user_token(
    token: str | None,
    secret: str | None,
    *,
    audience: str | None = None,
    issuer: str | None = None,
    max_lifetime: float | None = None,
    now: float | None = None,
) -> Identity:
    """Check an HS256 JWT; raise :class:`Unauthorized` saying why it is refused.

    ``audience``/``issuer``, when given, must match the token's ``aud``/``iss`` (which must
    be present). With ``max_lifetime`` (seconds), a token must carry an ``exp`` at most that
    far after ``now`` (default: the system clock). ``iat`` is not used for that bound: what
    a leaked token is worth is the time it has left, which ``exp`` alone decides.
    """
    if secret is None:
        raise Unauthorized("this channel needs a JWT and the gateway has no jwt_secret set")
    if not token:
        raise Unauthorized("missing token: pass ?token=<JWT> or Authorization: Bearer <JWT>")
    required = ["sub"] + [name for name, wanted in (("aud", audience), ("iss", issuer)) if wanted]
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=audience,
            issuer=issuer,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token ({type(exc).__name__})") from None
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Unauthorized(f'"{name}" must be a number (seconds since 1970)')
    user = claims["sub"]
    if not is_valid_topic(user, allow_wildcard=False):
        raise Unauthorized(
            "token subject must be a valid topic (1-64 characters of A-Z a-z 0-9 . _ - : /)"
        )
    now = time.time() if now is None else now
    exp: int | float | None = claims.get("exp")
    if max_lifetime is not None:
        if exp is None:
            raise Unauthorized('token has no "exp"; this gateway accepts only tokens that expire')
        if exp > now + max_lifetime:
            raise Unauthorized(
                f'token lives too long: "exp" is more than {max_lifetime:g} seconds away '
                "(max_token_lifetime)"
            )
    # Compared before any conversion: float(10**400) would raise.
    if exp is None or exp > now + EXPIRY_HORIZON:
        return Identity(user, None)
    return Identity(user, float(exp))


def check_origin(origin: str | None, allowed: tuple[str, ...]) -> None:
    """Refuse a browser page from a site not in ``allowed`` (cross-site WebSocket hijacking).

    An empty ``allowed`` admits every origin. A request without ``Origin`` comes from a
    program, not a browser page, and is admitted: the header is what browsers send to let
    the server decide, and any other client can write whatever it likes into it.
    """
    if not allowed or origin is None or origin_allowed(origin.lower(), allowed):
        return
    raise ForbiddenOrigin(f"origin {origin[:100]!r} is not in allowed_origins")


@functools.lru_cache(maxsize=256)  # the same few sites connect again and again
def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """``origin`` (lower case) matches an entry: exactly, or ``scheme://*.domain[:port]``
    for any subdomain of ``domain`` (not ``domain`` itself)."""
    for pattern in allowed:
        if origin == pattern:
            return True
        scheme, _, domain = pattern.partition("://*.")
        if domain and origin.startswith(scheme + "://") and origin.endswith("." + domain):
            subdomain = origin[len(scheme) + 3 : -len(domain) - 1]
            if subdomain:
                return True
    return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def check_publisher(
    token: str | None,
    expected: str | None,
    remote: str | None,
    *,
    host: str | None,
    origin: str | None,
    content_type: str | None,
    bound_host: str,
    relayed: bool = False,
) -> None:
    """The SPEC's publish rule: the token when one is configured, else loopback only.

    ``remote`` is the client address (behind a trusted proxy, the client it names). The
    loopback rule also refuses what a browser page or a proxy on this host could send for
    someone else: a request relayed by a proxy that is not in trusted_proxies
    (``relayed``), a ``Host`` that is not this host (DNS rebinding: a page on a name that
    now resolves to 127.0.0.1), an ``Origin`` other than the gateway's own, and a body not
    declared ``application/json`` (what an HTML form or a cross-site ``fetch`` without a
    CORS preflight can send). With a token none of this applies: a page cannot hold it.
    """
    if expected is not None:
        if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise PublishUnauthorized(
                "Authorization", "expected Authorization: Bearer <publish token>"
            )
        return
    if not _is_loopback(remote):
        raise PublishForbidden(
            "Authorization", "no publish_token is configured, so only loopback clients may publish"
        )
    if relayed:
        raise PublishForbidden(
            "X-Forwarded-For",
            "relayed by a proxy that is not in trusted_proxies; without a publish_token only "
            "loopback clients may publish",
        )
    name = host_name(host)
    if name is None or not is_local_host(name, bound_host):
        raise PublishForbiddenHost(
            "Host",
            "without a publish_token, publish to a loopback address, localhost or the "
            "gateway's bound host",
        )
    if origin is not None and origin.lower() not in (
        f"http://{host}".lower(),
        f"https://{host}".lower(),
    ):
        raise PublishForbiddenOrigin(
            "Origin", "a browser page from another origin may not publish without a publish_token"
        )
    if not is_json_media_type(content_type):
        raise PublishUnsupportedMediaType(
            "Content-Type", "send the body as Content-Type: application/json"
        )


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json``, with parameters or without (``; charset=utf-8``)."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def host_name(host: str | None) -> str | None:
    """The name in a ``Host`` header, without the port and brackets, lower case; None when
    it is missing or malformed."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def is_local_host(name: str, bound_host: str) -> bool:
    """``name`` (from :func:`host_name`) can only mean this host: a loopback address,
    ``localhost``, or the host the gateway is bound to (unless that is a wildcard such as
    0.0.0.0, which no client should type)."""
    if name == "localhost" or _is_loopback_address(name):
        return True
    bound = bound_host.strip("[]").lower()
    return name == bound and not _is_unspecified(bound)


def is_loopback_host(host: str) -> bool:
    """A bind address that only this host can reach (for the start-up warning)."""
    host = host.strip("[]").lower()
    return host == "localhost" or _is_loopback_address(host)


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_loopback(remote: str | None) -> bool:
    return remote is not None and _is_loopback_address(remote)


@functools.lru_cache(maxsize=1024)  # parsed once per peer address, not once per publish
def _is_loopback_address(remote: str) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    # A dual-stack listener reports a local IPv4 client as ::ffff:127.0.0.1, which
    # Python before 3.13 does not call loopback.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
