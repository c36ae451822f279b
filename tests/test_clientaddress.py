"""The client address behind trusted proxies: which header entry is believed, and when."""

from __future__ import annotations

import pytest

from wsgateway.clientaddress import client_address, is_trusted, parse_networks, parse_node

TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])


def resolve(
    peer: str | None, forwarded_for: str | None = None, forwarded: str | None = None
) -> str:
    return client_address(peer, forwarded_for, forwarded, TRUSTED)


def test_an_untrusted_peer_is_the_client_whatever_its_headers_say() -> None:
    assert resolve("203.0.113.7", "127.0.0.1", "for=127.0.0.1") == "203.0.113.7"
    assert resolve("::1", "198.51.100.1") == "::1"
    assert client_address("127.0.0.1", "198.51.100.1", None, ()) == "127.0.0.1"  # none trusted


def test_without_a_peer_the_client_is_unknown() -> None:
    assert resolve(None, "198.51.100.1") == "unknown"


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        ("198.51.100.1", "198.51.100.1"),
        # the client wrote the first entry itself; our proxy appended the real peer
        ("127.0.0.1, 198.51.100.1", "198.51.100.1"),
        ("1.2.3.4,198.51.100.1", "198.51.100.1"),
        # two of our own proxies in the chain are skipped
        ("198.51.100.1, 10.1.2.3", "198.51.100.1"),
        ("198.51.100.1, 10.1.2.3,  127.0.0.1 ", "198.51.100.1"),
        # every hop is ours: the first is the client
        ("10.9.9.9, 10.1.2.3", "10.9.9.9"),
        # ports (some proxies add them), IPv6, bracketed IPv6 with a port
        ("198.51.100.1:51234", "198.51.100.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("fd00::5, 2001:db8::1, fd12::1", "2001:db8::1"),
        # empty entries are skipped; an empty header names no client
        ("198.51.100.1,,", "198.51.100.1"),
        ("", "10.0.0.2"),
        (" , ", "10.0.0.2"),
        # what is not an address ends the walk, and is never taken for one
        ("198.51.100.1, unknown", "unknown"),
        ("garbage", "unknown"),
        ("198.51.100.1, 300.1.1.1", "unknown"),
        ("198.51.100.1, 127.0.0.1:99999999", "unknown"),
        ("198.51.100.1, [::1", "unknown"),
        ("198.51.100.1, [::1]x", "unknown"),
        ("198.51.100.1, 127.0.0.1:", "unknown"),
        ("198.51.100.1, 127.0.0.1:\uff18\uff10", "unknown"),  # non-ASCII digits
        ("198.51.100.1, localhost", "unknown"),
        ("_obf-id", "_obf-id"),
        ("_" + "x" * 100, "unknown"),  # an obfuscated id too long to be a key
    ],
)
def test_x_forwarded_for_rightmost_untrusted_entry(forwarded_for: str, client: str) -> None:
    assert resolve("10.0.0.2", forwarded_for) == client


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ("for=198.51.100.1", "198.51.100.1"),
        ("For=198.51.100.1;proto=https;by=10.0.0.2", "198.51.100.1"),
        ("proto=https; for=198.51.100.1", "198.51.100.1"),
        ('for="198.51.100.1:4711"', "198.51.100.1"),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=127.0.0.1, for=198.51.100.1", "198.51.100.1"),
        ("for=198.51.100.1, for=10.0.0.3", "198.51.100.1"),
        ('for=198.51.100.1, for="[fd00::1]"', "198.51.100.1"),
        # RFC 7239 6: unknown and obfuscated identifiers, with an obfuscated port
        ("for=unknown", "unknown"),
        ("for=_hidden", "_hidden"),
        ('for="_hidden:_port"', "_hidden"),
        ('for="198.51.100.1:_port"', "198.51.100.1"),
        # an element without for=, a quoted comma, a malformed value
        ("proto=https", "unknown"),
        ('for=198.51.100.1, by="a,b";for=203.0.113.9', "203.0.113.9"),
        ("for=", "unknown"),
        ('for="198.51.100.1', "unknown"),
        ("for=198.51.100.1;for=203.0.113.9", "unknown"),  # one for= per element
        ("forx=1.2.3.4", "unknown"),
        ('for="1.2.3.4"x', "unknown"),
        ('for="1.2\\"3"', "unknown"),
        # inputs that made a regular-expression parser backtrack for most of a second
        ("for=" + '\\"' * 4000, "unknown"),
        ('"\\' * 4000, "unknown"),
        ('for="' + "a" * 8000, "unknown"),
    ],
)
def test_forwarded_rfc_7239(forwarded: str, client: str) -> None:
    assert resolve("10.0.0.2", None, forwarded) == client


def test_x_forwarded_for_wins_over_forwarded() -> None:
    # nginx and HAProxy append to X-Forwarded-For and pass a client's Forwarded through.
    assert resolve("10.0.0.2", "198.51.100.1", "for=127.0.0.1") == "198.51.100.1"


def test_a_trusted_proxy_that_names_no_client_is_the_client() -> None:
    assert resolve("10.0.0.2") == "10.0.0.2"  # its own health check, say


def test_ipv4_mapped_peer_is_trusted_as_its_ipv4_address() -> None:
    assert resolve("::ffff:10.0.0.2", "198.51.100.1") == "198.51.100.1"


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("1.2.3.4:", None),
        ("1.2.3.4:123456", None),
        ("[::1]:", None),
        ("::1]", None),
        ("", None),
        ("a.b.c.d", None),
    ],
)
def test_parse_node(node: str, expected: str | None) -> None:
    ip = parse_node(node)
    assert (None if ip is None else str(ip)) == expected


def test_is_trusted() -> None:
    assert is_trusted("10.255.0.1", TRUSTED)
    assert is_trusted("127.0.0.1", TRUSTED)
    assert not is_trusted("127.0.0.2", TRUSTED)  # a single address, not loopback as a whole
    assert is_trusted("fd12:3456::1", TRUSTED)
    assert not is_trusted("2001:db8::1", TRUSTED)
    assert not is_trusted("not-an-address", TRUSTED)
