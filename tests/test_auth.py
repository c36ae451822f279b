"""Unit tests for wsgateway.auth: user JWTs, bearer headers and the publish rule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import pytest

from wsgateway.auth import (
    EXPIRY_HORIZON,
    Identity,
    bearer_token,
    check_origin,
    check_publisher,
    is_loopback_host,
    verify_user_token,
)
from wsgateway.errors import (
    ForbiddenOrigin,
    PublishError,
    PublishForbidden,
    PublishForbiddenHost,
    PublishForbiddenOrigin,
    PublishUnauthorized,
    PublishUnsupportedMediaType,
    Unauthorized,
)

# HS256 keys must be at least 32 bytes (RFC 7518 3.2); PyJWT warns below that.
SECRET = "unit-test-jwt-secret-0123456789abcdef"
OTHER_SECRET = "another-jwt-secret-fedcba9876543210xyz"
HS512_SECRET = "x" * 64
PUBLISH_TOKEN = "publish-token-9f8e7d6c5b4a"


def make_token(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def raw_token(payload: str, key: str = SECRET) -> str:
    """An HS256 token whose payload is exactly ``payload`` (JSON text PyJWT would not write,
    e.g. ``1e300`` or a 400-digit integer)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload.encode())
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def raw_claim(name: str, json_text: str) -> str:
    """A token for ``alice`` whose claim ``name`` is ``json_text`` as written."""
    return raw_token('{"sub": "alice", "' + name + '": ' + json_text + "}")


def refused(token: str | None, secret: str | None = SECRET, **rules: Any) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verify_user_token(token, secret, **rules)
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


# -- time claims, audience, issuer, lifetime ----------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value", "message"),
    [
        # PyJWT reads numeric strings as numbers; the expiry timer read "exp": "..." as none
        # and kept the connection open past the time the string meant.
        ("exp", "99999999999", '"exp" must be a number (seconds since 1970)'),
        ("nbf", "1", '"nbf" must be a number (seconds since 1970)'),
        ("iat", "1", '"iat" must be a number (seconds since 1970)'),
        # Refused by PyJWT already, before the type check.
        ("exp", "1", "token expired"),
        ("exp", "1e9", "invalid token (DecodeError)"),
        ("nbf", "99999999999", "invalid token (ImmatureSignatureError)"),
    ],
)
def test_time_claims_given_as_strings_are_refused(claim: str, value: str, message: str) -> None:
    assert refused(make_token({"sub": "alice", claim: value})).message == message


@pytest.mark.parametrize("value", ["true", "false"])
def test_boolean_time_claim_is_refused(value: str) -> None:
    exc = refused(raw_claim("nbf", value))
    assert exc.message == '"nbf" must be a number (seconds since 1970)'


@pytest.mark.parametrize(
    "exp", ["1e300", "1" + "0" * 30, "1" + "0" * 400, "1.7976931348623157e308"]
)
def test_huge_exp_is_accepted_as_never(exp: str) -> None:
    """Today a 400-digit exp raised OverflowError (a 500); none of these sets a timer."""
    identity = verify_user_token(raw_claim("exp", exp), SECRET)
    assert identity == Identity("alice", None)


@pytest.mark.parametrize("exp", ["1e400", "-1e400", "NaN", "Infinity", "null", "[1]"])
def test_exp_that_is_no_finite_number_is_refused(exp: str) -> None:
    exc = refused(raw_claim("exp", exp))
    assert exc.message in ("invalid token (DecodeError)", "token expired")


def test_exp_just_inside_the_horizon_keeps_its_timer() -> None:
    now = time.time()
    exp = int(now) + EXPIRY_HORIZON - 60
    assert verify_user_token(make_token({"sub": "a", "exp": exp}), SECRET, now=now) == (
        Identity("a", float(exp))
    )


AUDIENCE, ISSUER = "wsgateway", "https://auth.example.com"


def test_audience_and_issuer_when_configured() -> None:
    token = make_token({"sub": "alice", "aud": AUDIENCE, "iss": ISSUER})
    identity = verify_user_token(token, SECRET, audience=AUDIENCE, issuer=ISSUER)
    assert identity == Identity("alice", None)
    listed = make_token({"sub": "alice", "aud": ["other", AUDIENCE]})
    assert verify_user_token(listed, SECRET, audience=AUDIENCE).user == "alice"


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        pytest.param({"aud": "other", "iss": ISSUER}, "InvalidAudienceError", id="wrong-aud"),
        pytest.param({}, "MissingRequiredClaimError", id="no-aud"),
        pytest.param({"aud": AUDIENCE, "iss": "evil"}, "InvalidIssuerError", id="wrong-iss"),
        pytest.param({"aud": AUDIENCE}, "MissingRequiredClaimError", id="no-iss"),
    ],
)
def test_audience_and_issuer_are_verified_when_set(claims: dict[str, Any], error: str) -> None:
    token = make_token({"sub": "alice", **claims})
    exc = refused(token, audience=AUDIENCE, issuer=ISSUER)
    assert exc.message == f"invalid token ({error})"


def test_token_with_an_audience_is_refused_when_none_is_configured() -> None:
    # PyJWT's rule, kept: a token meant for someone else is not for us either.
    exc = refused(make_token({"sub": "alice", "aud": AUDIENCE}))
    assert exc.message == "invalid token (InvalidAudienceError)"


def test_max_lifetime_accepts_a_token_within_it() -> None:
    now = time.time()
    token = make_token({"sub": "alice", "exp": int(now) + 600})
    assert verify_user_token(token, SECRET, max_lifetime=600, now=now).expires == int(now) + 600


def test_max_lifetime_and_the_timer_horizon_include_their_bounds() -> None:
    now = float(int(time.time()))
    exactly = make_token({"sub": "alice", "exp": int(now) + 600})
    assert verify_user_token(exactly, SECRET, max_lifetime=600, now=now).expires == now + 600
    far = make_token({"sub": "a", "exp": int(now) + EXPIRY_HORIZON})
    assert verify_user_token(far, SECRET, now=now).expires == now + EXPIRY_HORIZON


def test_max_lifetime_is_measured_from_the_clock_given() -> None:
    # An hour earlier by the caller's clock, a token expiring in 10 minutes lives 70.
    now = time.time()
    token = make_token({"sub": "alice", "exp": int(now) + 600})
    exc = refused(token, max_lifetime=600, now=now - 3600)
    assert exc.message.startswith("token lives too long")


def test_max_lifetime_refuses_a_token_without_exp() -> None:
    exc = refused(make_token({"sub": "alice"}), max_lifetime=600)
    assert exc.message == 'token has no "exp"; this gateway accepts only tokens that expire'


@pytest.mark.parametrize("exp", ["601", "1e300", "1" + "0" * 400])
def test_max_lifetime_refuses_a_token_that_lives_longer(exp: str) -> None:
    now = time.time()
    value = str(int(now) + 601) if exp == "601" else exp
    exc = refused(raw_claim("exp", value), max_lifetime=600, now=now)
    assert exc.message == (
        'token lives too long: "exp" is more than 600 seconds away (max_token_lifetime)'
    )


def test_max_lifetime_judges_exp_not_iat() -> None:
    """An old iat does not make a token expiring soon any more dangerous, and a fresh iat
    does not shorten one that expires late: only exp counts."""
    now = time.time()
    old = make_token({"sub": "a", "iat": int(now) - 86400, "exp": int(now) + 60})
    assert verify_user_token(old, SECRET, max_lifetime=600, now=now).user == "a"
    late = make_token({"sub": "a", "iat": int(now), "exp": int(now) + 3600})
    refused(late, max_lifetime=600, now=now)


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

#: What a local program (curl, the CLI) sends to a gateway bound to 127.0.0.1:8080.
LOCAL_REQUEST: dict[str, Any] = {
    "host": "127.0.0.1:8080",
    "origin": None,
    "content_type": "application/json",
    "bound_host": "127.0.0.1",
}


def publish_check(
    token: str | None, expected: str | None, remote: str | None, **request: Any
) -> object:
    """check_publisher for a request like a local program's, with ``request`` changed."""
    return check_publisher(token, expected, remote, **{**LOCAL_REQUEST, **request})


def test_publisher_with_right_token() -> None:
    assert publish_check(PUBLISH_TOKEN, PUBLISH_TOKEN, "203.0.113.7") is None
    assert publish_check(PUBLISH_TOKEN, PUBLISH_TOKEN, None) is None


@pytest.mark.parametrize(
    "token",
    [PUBLISH_TOKEN + "x", PUBLISH_TOKEN[:-1], PUBLISH_TOKEN.upper(), "wrong", "ü" * 8],
    ids=["longer", "shorter", "case", "other", "non-ascii"],
)
@pytest.mark.parametrize("remote", ["127.0.0.1", "203.0.113.7"])
def test_publisher_with_wrong_token(token: str, remote: str) -> None:
    with pytest.raises(PublishUnauthorized) as info:
        publish_check(token, PUBLISH_TOKEN, remote)
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
        publish_check(None, PUBLISH_TOKEN, remote)
    assert info.value.field == "Authorization"
    assert PUBLISH_TOKEN not in str(info.value)


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1"])
def test_no_token_configured_allows_loopback(remote: str) -> None:
    assert publish_check(None, None, remote) is None
    assert publish_check("anything", None, remote) is None


def test_no_token_configured_allows_ipv4_mapped_loopback() -> None:
    assert publish_check(None, None, "::ffff:127.0.0.1") is None


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
        publish_check(None, None, remote)
    exc = info.value
    assert isinstance(exc, PublishError)
    assert exc.status == 403
    assert exc.code == "forbidden"
    assert exc.field == "Authorization"
    assert exc.message == "no publish_token is configured, so only loopback clients may publish"


def test_no_token_configured_refuses_remote_even_with_a_token() -> None:
    with pytest.raises(PublishForbidden):
        publish_check("some-token", None, "198.51.100.1")


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


# -- the loopback rule against cross-site and relayed publishing --------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8080",
        "127.0.0.1",
        "127.1.2.3:80",
        "[::1]:8080",
        "[::1]",
        "localhost:8080",
        "LOCALHOST",
        "localhost.",
        "gw.internal:8080",  # the bound host (below)
    ],
)
def test_loopback_rule_accepts_local_host_names(host: str) -> None:
    assert publish_check(None, None, "127.0.0.1", host=host, bound_host="gw.internal") is None


@pytest.mark.parametrize(
    ("host", "bound_host"),
    [
        ("[2001:db8::5]:8080", "[2001:db8::5]"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("gw.box", "GW.BOX"),
    ],
)
def test_loopback_rule_accepts_the_bound_host_however_it_is_written(
    host: str, bound_host: str
) -> None:
    assert publish_check(None, None, "127.0.0.1", host=host, bound_host=bound_host) is None


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8080",  # DNS rebinding: evil.example now resolves to 127.0.0.1
        "127.0.0.1.nip.io",
        "0.0.0.0:8080",  # the wildcard bind is not a name for this host
        "10.0.0.5:8080",
        "[::1",
        "[::1]x",
        "[::1]x80",  # no colon before the port
        "[::1]:x80",  # a port that is not a number
        "127.0.0.1:http",
        "::1",  # an IPv6 literal must be bracketed
        "",
        None,
    ],
)
def test_loopback_rule_refuses_other_host_headers(host: str | None) -> None:
    with pytest.raises(PublishForbiddenHost) as info:
        publish_check(None, None, "127.0.0.1", host=host, bound_host="0.0.0.0")
    exc = info.value
    assert (exc.status, exc.code, exc.field) == (403, "forbidden_host", "Host")
    assert exc.message == (
        "without a publish_token, publish to a loopback address, localhost or the "
        "gateway's bound host"
    )


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:8080", "HTTP://127.0.0.1:8080", "https://127.0.0.1:8080"]
)
def test_loopback_rule_accepts_the_gateways_own_origin(origin: str) -> None:
    assert publish_check(None, None, "127.0.0.1", origin=origin) is None


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://127.0.0.1:3000",  # another local service's page
        "http://localhost:8080",  # same host, another name: another origin
        "null",  # sandboxed frames, file: pages
        "",
    ],
)
def test_loopback_rule_refuses_a_foreign_origin(origin: str) -> None:
    with pytest.raises(PublishForbiddenOrigin) as info:
        publish_check(None, None, "127.0.0.1", origin=origin)
    exc = info.value
    assert (exc.status, exc.code, exc.field) == (403, "forbidden_origin", "Origin")
    assert exc.message == (
        "a browser page from another origin may not publish without a publish_token"
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON ;charset=UTF-8"],
)
def test_loopback_rule_accepts_json(content_type: str) -> None:
    assert publish_check(None, None, "127.0.0.1", content_type=content_type) is None


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # a cross-site fetch() without a CORS preflight
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",  # an HTML form, or curl -d
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/jsonx",
        "",
        None,  # a Blob body without a type: no Content-Type at all
    ],
)
def test_loopback_rule_refuses_other_media_types(content_type: str | None) -> None:
    with pytest.raises(PublishUnsupportedMediaType) as info:
        publish_check(None, None, "127.0.0.1", content_type=content_type)
    exc = info.value
    assert (exc.status, exc.code, exc.field) == (415, "unsupported_media_type", "Content-Type")
    assert exc.message == "send the body as Content-Type: application/json"


def test_loopback_rule_refuses_a_request_relayed_by_an_unknown_proxy() -> None:
    with pytest.raises(PublishForbidden) as info:
        publish_check(None, None, "127.0.0.1", relayed=True)
    exc = info.value
    assert (exc.status, exc.code, exc.field) == (403, "forbidden", "X-Forwarded-For")
    assert exc.message == (
        "relayed by a proxy that is not in trusted_proxies; without a publish_token only "
        "loopback clients may publish"
    )


def test_a_publish_token_lifts_the_loopback_rules_request_checks() -> None:
    # A page cannot hold the token, so only the token is checked.
    assert (
        publish_check(
            PUBLISH_TOKEN,
            PUBLISH_TOKEN,
            "203.0.113.7",
            host="gw.example.com",
            origin="https://app.example.com",
            content_type="text/plain",
            relayed=True,
        )
        is None
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("gw.example.com", False),
        ("LOCALHOSTX", False),  # only looks like localhost
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
