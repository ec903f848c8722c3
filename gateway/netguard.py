"""Which network addresses the gateway may connect to when it fetches a stranger's image URL.

The rule is decided on the resolved address, once per hop; fetch.py then connects to exactly
that address, so a name cannot resolve to something else between the check and the connect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.errors import ForbiddenImageUrl, ImageHostError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Cloud instance-metadata endpoints: refused even when private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IPv6
    )
)

# IPv6 ranges that carry an IPv4 address inside; the embedded address would dodge the v4 rules.
_EMBEDS_IPV4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::/96",  # IPv4-compatible (deprecated)
        "64:ff9b::/96",  # NAT64 well-known prefix
        "64:ff9b:1::/48",  # NAT64 local-use
        "2002::/16",  # 6to4
        "2001::/32",  # Teredo
        "::ffff:0:0:0/96",  # SIIT IPv4-translated
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def refusal_reason(address: IPAddress, allow_private: bool = False) -> str | None:
    """Why the gateway must not connect to `address`, or None if it may."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if _embeds_ipv4(address):
        # Refused outright: the embedded address would bypass the IPv4 rules, and nothing
        # legitimate needs an image from one.
        return "an IPv6 address with an embedded IPv4 address"
    if allow_private:
        return None
    return _private_reason(address)


def _embeds_ipv4(address: IPAddress) -> bool:
    if not isinstance(address, ipaddress.IPv6Address) or address.is_loopback:
        return False  # ::1 sits inside ::/96 but is plain IPv6 loopback
    return any(address in network for network in _EMBEDS_IPV4)


def _private_reason(address: IPAddress) -> str | None:
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a CGNAT address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


@dataclass(frozen=True)
class AllowEntry:
    """One DYNOSERVE_FETCH_ALLOW_HOSTS entry: a host pattern, or an origin (scheme://host:port)."""

    host: str
    scheme: str | None = None
    port: int | None = None

    def matches(self, host: str, scheme: str | None, port: int | None) -> bool:
        if self.scheme is not None:  # an origin: all three must match exactly
            return (self.scheme, self.host, self.port) == (scheme, host, port)
        if self.host.startswith("."):
            return host.endswith(self.host) or host == self.host[1:]
        return host == self.host


def parse_allow_entry(text: str) -> AllowEntry:
    """`images.example.com`, `.example.com` (and subdomains) or `https://images.example.com:8443`
    (that scheme, host and port only; the port defaults to the scheme's); ValueError if neither."""
    if "://" not in text:
        if not text or (any(c in text for c in "/:@?#") and not _ip_literal(text)):
            raise ValueError(
                f"{text!r} is neither a host name nor an origin "
                "(to pin a port, write an origin: http://host:port)"
            )
        return AllowEntry(_normal_host(text))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid origin: {exc}") from exc
    extra = parts.username or parts.password or parts.query or parts.fragment
    if parts.scheme not in ("http", "https") or not parts.hostname or extra:
        raise ValueError(f"{text!r} is not an origin like https://images.example.com:8443")
    if parts.path not in ("", "/"):
        raise ValueError(f"{text!r} has a path; an origin is scheme://host[:port] only")
    default = 443 if parts.scheme == "https" else 80
    return AllowEntry(_normal_host(parts.hostname), parts.scheme, port or default)


def _normal_host(host: str) -> str:
    name = host.strip("[]").lower().rstrip(".")
    return name.encode("idna").decode("ascii") if not name.isascii() else name


def host_allowed(
    host: str, allow_hosts: Iterable[str], scheme: str | None = None, port: int | None = None
) -> bool:
    """True if the allow-list is empty or an entry matches (host patterns ignore scheme and
    port; origin entries need `scheme` and `port` to match as well)."""
    patterns = [p.strip() for p in allow_hosts]
    if not patterns:
        return True
    name = _normal_host(host)
    return any(_entry_matches(p, name, scheme, port) for p in patterns)


def _entry_matches(pattern: str, host: str, scheme: str | None, port: int | None) -> bool:
    """A malformed entry matches nothing (fail closed); Settings.validate reports it at start."""
    try:
        entry = parse_allow_entry(pattern)
    except ValueError:
        return False
    return entry.matches(host, scheme, port)


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver (TCP addresses only, in its preferred order)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def pick_address(host: str, port: int, resolver: Resolver, allow_private: bool) -> IPAddress:
    """Resolve `host` once and return the address to connect to, or raise.

    Every resolved address must pass: a name that mixes public and internal addresses is
    refused outright rather than trusting the order the resolver returns them in.
    """
    literal = _ip_literal(host)
    if literal is not None:
        candidates = [literal]
    else:
        try:
            candidates = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise ImageHostError(f"cannot resolve image host {host!r}") from exc
        if not candidates:
            raise ImageHostError(f"image host {host!r} has no address")
    for address in candidates:
        reason = refusal_reason(address, allow_private)
        if reason is not None:
            raise ForbiddenImageUrl(f"image host {host!r} resolves to {reason}")
    return candidates[0]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
