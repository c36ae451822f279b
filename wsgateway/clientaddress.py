"""The client's address behind trusted reverse proxies. Pure: strings in, a string out.

Only a request whose TCP peer is one of ``trusted_proxies`` may name its client in a
header; from anyone else the headers are ignored, because anyone can write them. Behind a
trusted proxy the client is the rightmost address of ``X-Forwarded-For`` that is not itself
a trusted proxy: each proxy appends the address it received the request from, so entries
to the right were written by our own proxies and entries to the left by whoever came
before them (anything a client put there itself). ``Forwarded`` (RFC 7239) is read the
same way, ``for=`` of each element, when there is no ``X-Forwarded-For``: nginx and
HAProxy write ``X-Forwarded-For``; a proxy that writes only ``Forwarded`` must drop any
``X-Forwarded-For`` a client sends (README, "Deployment checklist").

A node that names no address (``unknown``, an obfuscated ``_id``, anything malformed)
ends the walk: the client is then ``"unknown"``, or the obfuscated id as the proxy gave it,
which is a stable name for one client. Neither is an IP address, so neither passes the
loopback rule for publishing.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
#: Headers by which a proxy names the client. On a request from a peer that is not a
#: trusted proxy they are ignored for the address, and their presence refuses a publish
#: under the loopback rule: a proxy we were not told about relayed it.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
# RFC 7239, 6.3: obfnode = "_" 1*( ALPHA / DIGIT / "." / "_" / "-" ); bounded here, since
# it becomes a key of the admission limits and a word of the logs.
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]{1,63}")


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries (validated by settings) as networks."""
    return tuple(ipaddress.ip_network(entry) for entry in entries)


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    forwarded: str | None,
    trusted: tuple[Network, ...],
) -> str:
    """The client of a request from ``peer`` carrying these header values (several lines
    of one header joined with ``,``), given the ``trusted`` proxy networks."""
    if peer is None:
        return UNKNOWN
    if not trusted or not is_trusted(peer, trusted):
        return peer
    if forwarded_for is not None:
        nodes = forwarded_for.split(",")
    elif forwarded is not None:
        nodes = _forwarded_for(forwarded)
    else:
        return peer  # the proxy's own request (a health check), or it names no client
    nodes = [node.strip() for node in nodes]
    nodes = [node for node in nodes if node]
    if not nodes:
        return peer
    for node in reversed(nodes):
        ip = parse_node(node)
        if ip is None:
            name = node.partition(":")[0]  # an obfuscated node may carry a port too
            return name if _OBFUSCATED.fullmatch(name) else UNKNOWN
        address = str(ip)
        if not is_trusted(address, trusted):
            return address
    return str(parse_node(nodes[0]))  # every hop is one of ours: the first is the client


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` node of each element of a ``Forwarded`` header, unquoted; an element
    without exactly one gives ``unknown`` (RFC 7239, 4: a parameter at most once)."""
    nodes = []
    for element in _split(header, ","):
        values = []
        for pair in _split(element, ";"):
            name, equals, value = pair.partition("=")
            if equals and name.strip().lower() == "for":
                values.append(value.strip())
        value = values[0] if len(values) == 1 else ""
        if value.startswith('"'):
            value = _unquote(value)
        nodes.append(value or UNKNOWN)
    return nodes


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` outside a quoted string. One pass over the
    text (a regular expression for this backtracks quadratically on ``\\"`` runs)."""
    if '"' not in text:
        return text.split(separator)
    parts = []
    start = 0
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str:
    """The text of a quoted string (RFC 9110 5.6.4), or "" when it is not one."""
    if len(value) < 2 or value[-1] != '"':
        return ""
    out = []
    escaped = False
    for char in value[1:-1]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return ""  # a quote inside: not one quoted string
        else:
            out.append(char)
    return "" if escaped else "".join(out)


@functools.lru_cache(maxsize=4096)  # the same clients and proxies again and again
def parse_node(node: str) -> IPAddress | None:
    """The address of one proxy-chain entry (``1.2.3.4``, ``1.2.3.4:5678``, ``::1``,
    ``[2001:db8::1]:443``), IPv4-mapped IPv6 as IPv4; None when it is not an address."""
    text = node
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two or more
        text, _, port = text.partition(":")
        if not _is_port(":" + port):
            return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_port(text: str) -> bool:
    """``:`` and a port: 1-5 digits, or an obfuscated one (RFC 7239, 6.3: ``_`` and more)."""
    port = text[1:]
    if text[:1] != ":" or not port.isascii():
        return False
    return (port.isdigit() and len(port) <= 5) or _OBFUSCATED.fullmatch(port) is not None


@functools.lru_cache(maxsize=4096)
def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    """``address`` (the TCP peer, or one entry of a proxy chain) is in ``trusted``."""
    ip = parse_node(address)
    return ip is not None and any(ip in network for network in trusted)
