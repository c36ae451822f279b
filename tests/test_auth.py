"""Unit tests for wsgateway.auth: user JWTs, bearer headers and the publish rule."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from wsgateway.auth import (
    Identity,
    bearer_token,
    check_origin,
    check_publisher,
    verify_user_token,
)
from wsgateway.errors import (
    ForbiddenOrigin,
    PublishError,
    PublishForbidden,
    PublishUnauthorized,
    Unauthorized,
)

# HS256 keys must be at least 32 bytes (RFC 7518 3.2); PyJWT warns below that.
SECRET = "unit-test-jwt-secret-0123456789abcdef"
OTHER_SECRET = "another-jwt-secret-fedcba9876543210xyz"
HS512_SECRET = "x" * 64
PUBLISH_TOKEN = "publish-token-9f8e7d6c5b4a"


def make_token(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def refused(token: str | None, secret: str | None = SECRET) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verify_user_token(token, secret)
    exc = info.value
    assert exc.status == 401
    assert exc.reason == "unauthorized"
    if token:
        assert token not in str(exc)
        assert token not in exc.message
        for part in token.split("."):
            if len(part) >= 8:
                assert part not in exc.message
    return exc


# -- verify_user_token ------------------------------------------------------------------------


def test_valid_token_with_expiry() -> None:
    exp = int(time.time()) + 3600
    identity = verify_user_token(make_token({"sub": "alice", "exp": exp}), SECRET)
    assert identity == Identity("alice", float(exp))
    assert isinstance(identity.expires, float)


def test_valid_token_without_expiry() -> None:
    assert verify_user_token(make_token({"sub": "user-42"}), SECRET) == Identity("user-42", None)


@pytest.mark.parametrize("sub", ["a", "U" * 64, "acct:1/sub.2_x-y"])
def test_valid_subjects(sub: str) -> None:
    assert verify_user_token(make_token({"sub": sub}), SECRET).user == sub


def test_extra_claims_are_ignored() -> None:
    token = make_token({"sub": "bob", "role": "trader", "iat": int(time.time())})
    assert verify_user_token(token, SECRET) == Identity("bob", None)


def test_expired_token() -> None:
    token = make_token({"sub": "alice", "exp": int(time.time()) - 60})
    exc = refused(token)
    assert exc.message == "token expired"


def test_not_yet_valid_token() -> None:
    token = make_token({"sub": "alice", "nbf": int(time.time()) + 3600})
    assert refused(token).message == "invalid token (ImmatureSignatureError)"


def test_wrong_secret() -> None:
    token = make_token({"sub": "alice"}, key=OTHER_SECRET)
    assert refused(token).message == "invalid token (InvalidSignatureError)"


def test_hs512_token_is_refused() -> None:
    token = make_token({"sub": "alice"}, key=HS512_SECRET, algorithm="HS512")
    assert refused(token, HS512_SECRET).message == "invalid token (InvalidAlgorithmError)"


def test_hs512_token_signed_with_the_right_secret_is_refused() -> None:
    token = make_token({"sub": "alice"}, key=SECRET + SECRET, algorithm="HS512")
    assert refused(token, SECRET + SECRET).message == "invalid token (InvalidAlgorithmError)"


def test_alg_none_token_is_refused() -> None:
    token = jwt.encode({"sub": "alice"}, None, algorithm="none")
    assert token.endswith(".")  # unsigned
    assert refused(token).message == "invalid token (InvalidAlgorithmError)"


def test_tampered_payload_is_refused() -> None:
    header, _, signature = make_token({"sub": "alice"}).split(".")
    forged_payload = make_token({"sub": "mallory"}).split(".")[1]
    token = f"{header}.{forged_payload}.{signature}"
    assert refused(token).message == "invalid token (InvalidSignatureError)"


@pytest.mark.parametrize(
    ("token", "error"),
    [
        pytest.param("not-a-jwt", "DecodeError", id="word"),
        pytest.param("abcdefghij.klmnopqrst.uvwxyz0123", "DecodeError", id="garbage-parts"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9..", "InvalidSignatureError", id="empty-parts"),
        pytest.param("x" * 500, "DecodeError", id="long"),
    ],
)
def test_malformed_token(token: str, error: str) -> None:
    assert refused(token).message == f"invalid token ({error})"


def test_missing_sub() -> None:
    token = make_token({"name": "alice", "exp": int(time.time()) + 60})
    assert refused(token).message == "invalid token (MissingRequiredClaimError)"


@pytest.mark.parametrize(
    "sub",
    ["alice bob", "*", "", "a" * 65, "al\nice", "élodie", "alice;drop"],
    ids=["space", "wildcard", "empty", "too-long", "newline", "non-ascii", "semicolon"],
)
def test_sub_with_invalid_characters(sub: str) -> None:
    token = make_token({"sub": sub})
    exc = refused(token)
    assert exc.message == (
        "token subject must be a valid topic (1-64 characters of A-Z a-z 0-9 . _ - : /)"
    )
    if sub:
        assert sub not in exc.message


@pytest.mark.parametrize("sub", [42, None, ["alice"]], ids=["int", "null", "list"])
def test_non_string_sub_is_refused(sub: object) -> None:
    token = make_token({"sub": sub})
    exc = refused(token)
    assert exc.message.startswith(("invalid token (", "token subject must be a valid topic"))


def test_no_secret_configured() -> None:
    exc = refused(make_token({"sub": "alice"}), secret=None)
    assert exc.message == "this channel needs a JWT and the gateway has no jwt_secret set"


@pytest.mark.parametrize("token", [None, ""], ids=["none", "empty"])
def test_missing_token(token: str | None) -> None:
    exc = refused(token)
    assert exc.message == "missing token: pass ?token=<JWT> or Authorization: Bearer <JWT>"


def test_error_messages_never_contain_the_token() -> None:
    tokens = [
        make_token({"sub": "alice", "exp": int(time.time()) - 1}),
        make_token({"sub": "alice"}, key=OTHER_SECRET),
        make_token({"sub": "bad sub"}),
        "secret-looking-garbage-token",
    ]
    for token in tokens:
        with pytest.raises(Unauthorized) as info:
            verify_user_token(token, SECRET)
        assert token not in str(info.value)
        assert SECRET not in str(info.value)


# -- bearer_token -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("Bearer abc.def.ghi", "abc.def.ghi", id="standard"),
        pytest.param("bearer abc", "abc", id="lowercase"),
        pytest.param("BEARER abc", "abc", id="uppercase"),
        pytest.param("Bearer   abc  ", "abc", id="extra-spaces"),
        pytest.param("Bearer ", None, id="empty-token"),
        pytest.param("Bearer    ", None, id="blank-token"),
        pytest.param("Bearer", None, id="scheme-only"),
        pytest.param("Bearerabc", None, id="no-space"),
        pytest.param("Basic dXNlcjpwYXNz", None, id="basic"),
        pytest.param("Token abc", None, id="other-scheme"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="none"),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


# -- check_publisher --------------------------------------------------------------------------


def test_publisher_with_right_token() -> None:
    assert check_publisher(PUBLISH_TOKEN, PUBLISH_TOKEN, "203.0.113.7") is None
    assert check_publisher(PUBLISH_TOKEN, PUBLISH_TOKEN, None) is None


@pytest.mark.parametrize(
    "token",
    [PUBLISH_TOKEN + "x", PUBLISH_TOKEN[:-1], PUBLISH_TOKEN.upper(), "wrong", "ü" * 8],
    ids=["longer", "shorter", "case", "other", "non-ascii"],
)
@pytest.mark.parametrize("remote", ["127.0.0.1", "203.0.113.7"])
def test_publisher_with_wrong_token(token: str, remote: str) -> None:
    with pytest.raises(PublishUnauthorized) as info:
        check_publisher(token, PUBLISH_TOKEN, remote)
    exc = info.value
    assert exc.status == 401
    assert exc.code == "unauthorized"
    assert exc.field == "Authorization"
    assert exc.message == "expected Authorization: Bearer <publish token>"
    assert token not in str(exc)
    assert PUBLISH_TOKEN not in str(exc)


@pytest.mark.parametrize("remote", ["127.0.0.1", "::1", "203.0.113.7", None])
def test_publisher_with_missing_token_when_one_is_configured(remote: str | None) -> None:
    # Loopback is no excuse once a token is configured.
    with pytest.raises(PublishUnauthorized) as info:
        check_publisher(None, PUBLISH_TOKEN, remote)
    assert info.value.field == "Authorization"
    assert PUBLISH_TOKEN not in str(info.value)


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1"])
def test_no_token_configured_allows_loopback(remote: str) -> None:
    assert check_publisher(None, None, remote) is None
    assert check_publisher("anything", None, remote) is None


def test_no_token_configured_allows_ipv4_mapped_loopback() -> None:
    assert check_publisher(None, None, "::ffff:127.0.0.1") is None


@pytest.mark.parametrize(
    "remote",
    [
        "10.0.0.1",
        "192.168.1.10",
        "203.0.113.7",
        "0.0.0.0",
        "::",
        "2001:db8::1",
        "fe80::1",
        "localhost",
        "not-an-address",
        "",
        None,
    ],
)
def test_no_token_configured_refuses_other_addresses(remote: str | None) -> None:
    with pytest.raises(PublishForbidden) as info:
        check_publisher(None, None, remote)
    exc = info.value
    assert isinstance(exc, PublishError)
    assert exc.status == 403
    assert exc.code == "forbidden"
    assert exc.field == "Authorization"
    assert exc.message == "no publish_token is configured, so only loopback clients may publish"


def test_no_token_configured_refuses_remote_even_with_a_token() -> None:
    with pytest.raises(PublishForbidden):
        check_publisher("some-token", None, "198.51.100.1")


# -- check_origin -----------------------------------------------------------------------------

ALLOWED = ("https://app.example.com", "http://localhost:3000", "https://*.desk.example.com")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://anything.example.net", ()),  # nothing configured: every origin
        (None, ALLOWED),  # no Origin header: not a browser page
        ("https://app.example.com", ALLOWED),
        ("HTTPS://APP.EXAMPLE.COM", ALLOWED),
        ("http://localhost:3000", ALLOWED),
        ("https://ny.desk.example.com", ALLOWED),
        ("https://a.b.desk.example.com", ALLOWED),
        ("null", ("null",)),
    ],
)
def test_allowed_origins(origin: str | None, allowed: tuple[str, ...]) -> None:
    check_origin(origin, allowed)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.net",
        "http://app.example.com",  # another scheme is another origin
        "https://app.example.com:8443",  # and so is another port
        "http://localhost:3001",
        "https://desk.example.com",  # "*." means subdomains only
        "https://evildesk.example.com",
        "http://ny.desk.example.com",
        "https://app.example.com.evil.net",
        "null",
        "",
    ],
)
def test_refused_origins(origin: str) -> None:
    with pytest.raises(ForbiddenOrigin) as info:
        check_origin(origin, ALLOWED)
    assert info.value.status == 403
    assert info.value.reason == "forbidden_origin"
    assert info.value.message == f"origin {origin!r} is not in allowed_origins"


def test_refused_origin_message_is_bounded() -> None:
    with pytest.raises(ForbiddenOrigin) as info:
        check_origin("https://" + "a" * 5000 + ".net", ALLOWED)
    assert len(info.value.message) < 150
    shown = "https://" + "a" * 92  # the first 100 characters
    assert info.value.message == f"origin {shown!r} is not in allowed_origins"
