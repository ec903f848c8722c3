"""The address rules behind SSRF protection, and URL vetting, without any network access."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from gateway.errors import ConfigError, ForbiddenImageUrl, ImageHostError, InvalidImageUrl
from gateway.fetch import parse_target
from gateway.netguard import host_allowed, pick_address, refusal_reason
from gateway.settings import Settings

REFUSED = [
    "127.0.0.1",
    "127.1.2.3",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "100.100.100.200",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "198.18.0.1",
    "192.0.2.1",
    "192.0.0.192",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:8.8.8.8",
    "::127.0.0.1",
    "2002:7f00:1::1",
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "64:ff9b::7f00:1",
    "64:ff9b::808:808",
    "64:ff9b:1::a00:1",
    "2001:db8::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::1"]
# Refused even with the private-address opt-in.
ALWAYS_REFUSED = [
    "169.254.169.254",
    "169.254.170.2",
    "100.100.100.200",
    "fd00:ec2::254",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "2002:7f00:1::1",
    "64:ff9b::a00:1",
]
OPT_IN_ALLOWED = ["127.0.0.1", "10.0.0.1", "192.168.0.10", "100.64.1.1", "::1", "fd12::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_by_default(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_refused_even_when_private_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize("address", OPT_IN_ALLOWED)
def test_private_opt_in(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), allow_private=True) is None


def stub(table: dict[str, list[str]]) -> object:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return table[host]

    return resolve


def numeric_only(host: str, port: int) -> list[str]:
    """The system's parser of numeric host forms (inet_aton), which never asks DNS."""
    infos = socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST)
    return [str(info[4][0]) for info in infos]


def test_pick_address_uses_the_resolved_public_address() -> None:
    resolver = stub({"images.test": ["93.184.216.34"]})
    assert str(pick_address("images.test", 80, resolver, False)) == "93.184.216.34"  # type: ignore[arg-type]


def test_a_name_mixing_public_and_private_addresses_is_refused() -> None:
    resolver = stub({"sneaky.test": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(ForbiddenImageUrl, match="private"):
        pick_address("sneaky.test", 80, resolver, False)  # type: ignore[arg-type]


def test_unresolvable_host_is_an_image_host_error() -> None:
    with pytest.raises(ImageHostError):
        pick_address("nowhere.test", 80, stub({}), False)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1"])
def test_obfuscated_loopback_forms_are_refused(host: str) -> None:
    with pytest.raises(ForbiddenImageUrl):
        pick_address(host, 80, numeric_only, False)


@pytest.mark.parametrize(
    "host", ["[::1]", "[::ffff:127.0.0.1]", "169.254.169.254", "[fd00:ec2::254]"]
)
def test_ip_literals_are_checked_without_resolving(host: str) -> None:
    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("literal addresses must not be resolved")

    with pytest.raises(ForbiddenImageUrl):
        pick_address(host, 80, no_dns, False)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.com/x.png", ForbiddenImageUrl),
        ("file:///etc/passwd", ForbiddenImageUrl),
        ("gopher://example.com/", ForbiddenImageUrl),
        ("javascript:alert(1)", ForbiddenImageUrl),
        ("http://user:pw@example.com/x.png", ForbiddenImageUrl),
        ("http://user@example.com/x.png", ForbiddenImageUrl),
        ("http://example.com:99999/x.png", InvalidImageUrl),
        ("http://example.com:port/x.png", InvalidImageUrl),
        ("http:///x.png", InvalidImageUrl),
        ("http://exa mple.com/", InvalidImageUrl),
        ("http://example.com/\r\nHost: evil", InvalidImageUrl),
        ("http://example.com/" + "a" * 3000, InvalidImageUrl),
        ("", InvalidImageUrl),
        ("not a url", InvalidImageUrl),
    ],
)
def test_bad_urls(url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_target(url)


def test_target_parts() -> None:
    target = parse_target("https://Images.Example.com:8443/a b/ü.png?x=1#frag".replace(" ", "%20"))
    assert (target.scheme, target.host, target.port) == ("https", "images.example.com", 8443)
    assert target.path == "/a%20b/%C3%BC.png?x=1"
    assert target.host_header == "images.example.com:8443"
    assert parse_target("http://bücher.example/x").host == "xn--bcher-kva.example"
    assert parse_target("http://[2606:4700::1]/x").host_header == "[2606:4700::1]"


def test_allow_list() -> None:
    assert host_allowed("anything.test", ())
    assert host_allowed("img.example.com", (".example.com",))
    assert host_allowed("example.com", (".example.com",))
    assert host_allowed("cdn.test", ("cdn.test",))
    assert not host_allowed("evil-example.com", (".example.com",))
    assert not host_allowed("sub.cdn.test", ("cdn.test",))
    with pytest.raises(ForbiddenImageUrl, match="allow-list"):
        parse_target("http://other.test/x.png", ("cdn.test",))


def test_allow_list_origins_match_scheme_host_and_port() -> None:
    origin = ("http://127.0.0.2:8602",)
    assert host_allowed("127.0.0.2", origin, "http", 8602)
    assert not host_allowed("127.0.0.2", origin, "http", 18099)
    assert not host_allowed("127.0.0.2", origin, "https", 8602)
    assert not host_allowed("127.0.0.3", origin, "http", 8602)
    assert host_allowed("images.example.com", ("https://Images.Example.com",), "https", 443)
    assert not host_allowed("images.example.com", ("https://images.example.com",), "https", 8443)
    assert host_allowed("::1", ("http://[::1]:8080",), "http", 8080)
    assert parse_target("http://127.0.0.2:8602/x.png", origin).port == 8602
    with pytest.raises(ForbiddenImageUrl, match="allow-list"):
        parse_target("http://127.0.0.2:18099/x.png", origin)


@pytest.mark.parametrize(
    "entry",
    ["ftp://images.test", "http://images.test/path", "http://u:p@images.test", "http://", "a/b"],
)
def test_malformed_allow_list_entries_stop_the_gateway(entry: str) -> None:
    with pytest.raises(ConfigError, match="DYNOSERVE_FETCH_ALLOW_HOSTS"):
        Settings.from_env({"DYNOSERVE_FETCH_ALLOW_HOSTS": f"images.test,{entry}"})
    # Should one get past the settings, it allows nothing rather than everything.
    assert not host_allowed("images.test", (entry,), "http", 80)
    assert host_allowed("images.test", (entry, "images.test"), "http", 80)
