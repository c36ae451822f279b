"""wsgateway token: durations, claims, and tokens the gateway's own check accepts."""

from __future__ import annotations

import time

import jwt
import pytest

from wsgateway.auth import verify_user_token
from wsgateway.errors import UsageError
from wsgateway.settings import Settings
from wsgateway.tokens import mint_user_token, parse_claim, parse_duration

SECRET = "tokens-test-secret-0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("2w", 1209600), ("90", 90)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "1y", "-5m", "1.5h", "h", "1h30m", "4000d"])
def test_bad_durations_name_the_forms(text: str) -> None:
    with pytest.raises(UsageError, match="30s, 15m, 1h or 7d"):
        parse_duration(text)


def test_claims_are_json_when_they_can_be_and_strings_otherwise() -> None:
    assert parse_claim("admin=true") == ("admin", True)
    assert parse_claim('roles=["a","b"]') == ("roles", ["a", "b"])
    assert parse_claim("plan=pro") == ("plan", "pro")
    assert parse_claim("note=") == ("note", "")
    for bad in ("plan", "=x"):
        with pytest.raises(UsageError, match="KEY=VALUE"):
            parse_claim(bad)
    for reserved in ("sub=bob", "exp=1", "aud=x"):
        with pytest.raises(UsageError, match="set by the command"):
            parse_claim(reserved)


def test_a_minted_token_passes_the_gateways_check_with_its_settings() -> None:
    settings = Settings(
        jwt_secret=SECRET, jwt_audience="md", jwt_issuer="https://auth", max_token_lifetime=600
    )
    now = time.time()
    token = mint_user_token(settings, "alice", 300, claims={"plan": "pro"}, now=now)
    identity = verify_user_token(
        token, SECRET, audience="md", issuer="https://auth", max_lifetime=600, now=now
    )
    assert identity.user == "alice"
    assert identity.expires == int(now) + 300
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="md")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["plan"] == "pro" and claims["iss"] == "https://auth"
    assert claims["exp"] - claims["iat"] == 300


def test_refusals_are_usage_errors_saying_why() -> None:
    with pytest.raises(UsageError, match="no jwt_secret is configured"):
        mint_user_token(Settings(), "alice", 60)
    with pytest.raises(UsageError, match="--sub"):
        mint_user_token(Settings(jwt_secret=SECRET), "not a topic", 60)
    with pytest.raises(UsageError, match="max_token_lifetime"):
        mint_user_token(Settings(jwt_secret=SECRET, max_token_lifetime=60), "alice", 61)
