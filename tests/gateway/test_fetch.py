"""Image fetching against a real loopback HTTP server, with the default (strict) address rules.

A stub resolver gives test host names public addresses, and FakeInternet routes connections to
those public addresses to the loopback server; any other connection fails the test, so a guard
that let something through is caught without a packet leaving the machine.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from devtools.tls import self_signed
from gateway.errors import (
    DeadlineExceeded,
    ForbiddenImageUrl,
    ImageHostError,
    PayloadTooLarge,
    TooManyRedirects,
)
from gateway.fetch import FetchPolicy, ImageFetcher
from tests.imagehost import ImageServer, image_bytes, serving_images

PUBLIC = "93.184.216.34"
PUBLIC_2 = "93.184.216.35"
PNG = image_bytes("PNG")


class FakeInternet:
    """Replaces socket.create_connection: public test addresses lead to the loopback server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts: list[tuple[str, int]] = []
        self.real = socket.create_connection

    def __call__(self, address: tuple[str, int], timeout: Any = None, *args: Any) -> socket.socket:
        self.attempts.append(address)
        if address[0] in (PUBLIC, PUBLIC_2):
            return self.real(("127.0.0.1", self.port), timeout)
        raise AssertionError(f"fetcher tried to connect to {address!r}")


class StubResolver:
    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown host")
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def internet(monkeypatch: pytest.MonkeyPatch, image_server: ImageServer) -> FakeInternet:
    fake = FakeInternet(image_server.server_address[1])
    monkeypatch.setattr(socket, "create_connection", fake)
    return fake


def policy(**overrides: Any) -> FetchPolicy:
    values: dict[str, Any] = {
        "max_bytes": 1_000_000,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "total_timeout_s": 4.0,
        "max_redirects": 3,
        "allow_hosts": (),
        "allow_private": False,
    }
    values.update(overrides)
    return FetchPolicy(**values)


def fetcher(resolver: Any = None, **overrides: Any) -> ImageFetcher:
    return ImageFetcher(policy(**overrides), resolver or StubResolver({"images.test": [[PUBLIC]]}))


def test_fetch_pins_the_resolved_address(image_server: ImageServer, internet: FakeInternet) -> None:
    image_server.add_bytes("/cat.png", PNG)
    resolver = StubResolver({"images.test": [[PUBLIC]]})
    fetched = fetcher(resolver).fetch("http://images.test/cat.png")
    assert fetched.data == PNG
    assert internet.attempts == [(PUBLIC, 80)]
    assert resolver.calls == ["images.test"]
    path, headers = image_server.hits[-1]
    assert path == "/cat.png"
    assert headers["Host"] == "images.test"
    assert headers["Accept-Encoding"] == "identity"


def test_dns_rebinding_cannot_switch_the_address(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    image_server.add_bytes("/rebind.png", PNG)
    resolver = StubResolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    assert fetcher(resolver).fetch("http://rebind.test/rebind.png").data == PNG
    assert resolver.calls == ["rebind.test"]
    assert internet.attempts == [(PUBLIC, 80)]


def test_redirects_are_followed_and_each_hop_checked(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    image_server.add_bytes("/final.png", PNG)
    image_server.add_redirect("/hop2", "http://cdn.test/final.png", 301)
    image_server.add_redirect("/hop1", "/hop2", 307)
    resolver = StubResolver({"images.test": [[PUBLIC]], "cdn.test": [[PUBLIC_2]]})
    assert fetcher(resolver).fetch("http://images.test/hop1").data == PNG
    assert resolver.calls == ["images.test", "images.test", "cdn.test"]
    assert internet.attempts[-1] == (PUBLIC_2, 80)


@pytest.mark.parametrize(
    "location",
    [
        "http://internal.test/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://localhost:8500/",
        "file:///etc/passwd",
        "http://admin:pw@images.test/",
    ],
)
def test_redirect_to_forbidden_place_is_refused(
    image_server: ImageServer, internet: FakeInternet, location: str
) -> None:
    image_server.add_redirect("/evil", location)
    resolver = StubResolver(
        {"images.test": [[PUBLIC]], "internal.test": [["10.0.0.5"]], "localhost": [["127.0.0.1"]]}
    )
    with pytest.raises(ForbiddenImageUrl):
        fetcher(resolver).fetch("http://images.test/evil")
    assert internet.attempts == [(PUBLIC, 80)]


def test_too_many_redirects(image_server: ImageServer, internet: FakeInternet) -> None:
    image_server.add_redirect("/loop", "/loop")
    before = len(image_server.hits)
    with pytest.raises(TooManyRedirects, match="redirected"):
        fetcher(max_redirects=2).fetch("http://images.test/loop")
    assert [path for path, _ in image_server.hits[before:]] == ["/loop"] * 3
    assert internet.attempts == [(PUBLIC, 80)]  # the hops shared one kept-alive connection


def test_content_length_over_the_cap_is_refused_before_reading(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    image_server.add_bytes("/big.png", b"\x89PNG" + b"\0" * 5000)
    with pytest.raises(PayloadTooLarge):
        fetcher(max_bytes=1000).fetch("http://images.test/big.png")


def _raw_route(body_chunks: Iterator[bytes], headers: dict[str, str]) -> Any:
    """A response without Content-Length, written as it comes (Content-Length is not trusted)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Connection", "close")
        h.end_headers()
        for chunk in body_chunks:
            h.wfile.write(chunk)
            h.wfile.flush()
        h.close_connection = True

    return route


def test_stream_without_length_is_capped_while_reading(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    image_server.routes["/endless"] = _raw_route(iter([b"\0" * 65536] * 64), {})
    with pytest.raises(PayloadTooLarge):
        fetcher(max_bytes=100_000).fetch("http://images.test/endless")


def test_compressed_bomb_is_bounded(image_server: ImageServer, internet: FakeInternet) -> None:
    bomb = gzip.compress(b"\0" * 50_000_000, compresslevel=9)
    image_server.add_bytes("/bomb", bomb, {"Content-Encoding": "gzip"})
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge):
        fetcher(max_bytes=1_000_000).fetch("http://images.test/bomb")


def test_gzip_within_the_cap_is_decoded(image_server: ImageServer, internet: FakeInternet) -> None:
    image_server.add_bytes("/gz.png", gzip.compress(PNG), {"Content-Encoding": "gzip"})
    assert fetcher().fetch("http://images.test/gz.png").data == PNG


def test_slow_drip_hits_the_total_budget(image_server: ImageServer, internet: FakeInternet) -> None:
    def drip() -> Iterator[bytes]:
        for _ in range(40):
            time.sleep(0.1)
            yield b"x"

    image_server.routes["/drip"] = _raw_route(drip(), {})
    start = time.monotonic()
    with pytest.raises(ImageHostError) as info:
        fetcher(total_timeout_s=0.6, read_timeout_s=0.5).fetch("http://images.test/drip")
    assert info.value.code == "image_host_timeout"
    assert time.monotonic() - start < 2.0


def test_the_request_deadline_shortens_the_budget(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    """The request's deadline, when it comes before the fetch budget ends, is what cuts the
    fetch; the answer says so (504, stage fetch), not that the host was slow (502)."""
    image_server.routes["/late"] = lambda h: time.sleep(2.0)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        fetcher(total_timeout_s=8.0).fetch("http://images.test/late", deadline=start + 0.4)
    assert info.value.stage == "fetch"
    assert time.monotonic() - start < 1.5
    # A later deadline leaves the fetch's own budget in charge.
    with pytest.raises(ImageHostError) as own:
        fetcher(total_timeout_s=0.4).fetch(
            "http://images.test/late", deadline=time.monotonic() + 20
        )
    assert own.value.code == "image_host_timeout"


def test_silent_host_hits_the_read_timeout(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    image_server.routes["/silent"] = lambda h: time.sleep(1.0)
    with pytest.raises(ImageHostError) as info:
        fetcher(read_timeout_s=0.3).fetch("http://images.test/silent")
    assert info.value.code == "image_host_timeout"


def test_error_status_from_host(image_server: ImageServer, internet: FakeInternet) -> None:
    with pytest.raises(ImageHostError, match="404"):
        fetcher().fetch("http://images.test/missing.png")


def test_unknown_host(internet: FakeInternet) -> None:
    with pytest.raises(ImageHostError, match="resolve"):
        fetcher().fetch("http://nowhere.test/x.png")
    assert internet.attempts == []


def test_proxy_variables_are_ignored(
    image_server: ImageServer, internet: FakeInternet, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_server.add_bytes("/proxied.png", PNG)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://10.9.9.9:3128")
    assert fetcher().fetch("http://images.test/proxied.png").data == PNG
    assert internet.attempts == [(PUBLIC, 80)]


def test_loopback_needs_the_opt_in(image_server: ImageServer) -> None:
    url = image_server.add_bytes("/local.png", PNG)
    with pytest.raises(ForbiddenImageUrl, match="loopback"):
        ImageFetcher(policy()).fetch(url)
    assert ImageFetcher(policy(allow_private=True)).fetch(url).data == PNG


def test_tls_is_verified_against_the_host_name(internet: FakeInternet) -> None:
    # The loopback server speaks plain HTTP: the TLS handshake must fail, not fall back.
    with pytest.raises(ImageHostError):
        fetcher().fetch("https://images.test:80/cat.png")


def test_connection_refused(image_server: ImageServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ImageHostError):
        ImageFetcher(policy(allow_private=True)).fetch(f"http://127.0.0.1:{port}/x.png")


def test_slow_dns_is_bounded(internet: FakeInternet) -> None:
    release = threading.Event()

    def slow_resolver(host: str, port: int) -> list[str]:
        release.wait(5)
        return [PUBLIC]

    start = time.monotonic()
    try:
        with pytest.raises(ImageHostError) as info:
            fetcher(slow_resolver, connect_timeout_s=0.3).fetch("http://slow-dns.test/x.png")
    finally:
        release.set()
    assert info.value.code == "image_host_timeout"
    assert time.monotonic() - start < 2
    assert internet.attempts == []


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ImageServer, bytes]]:
    cert_file, key_file, pem = self_signed(tmp_path, "images.test")
    server = ImageServer()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, pem
    server.shutdown()
    server.server_close()


def test_https_verifies_the_name_while_connecting_to_the_pinned_address(
    tls_server: tuple[ImageServer, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, pem = tls_server
    server.add_bytes("/tls.png", PNG)
    internet = FakeInternet(server.server_address[1])
    monkeypatch.setattr(socket, "create_connection", internet)
    trust = ssl.create_default_context(cadata=pem.decode())
    resolver = StubResolver({"images.test": [[PUBLIC]], "other.test": [[PUBLIC_2]]})
    fetcher_ = ImageFetcher(policy(), resolver, tls=trust)
    assert fetcher_.fetch("https://images.test/tls.png").data == PNG
    assert internet.attempts == [(PUBLIC, 443)]
    # Same server, another name: the certificate does not match it, so nothing is read.
    with pytest.raises(ImageHostError):
        fetcher_.fetch("https://other.test/tls.png")


# --- every phase inside the one budget (issue 11, item 8) -------------------------------------


def loopback_fetcher(**overrides: Any) -> ImageFetcher:
    """A fetcher that may reach the loopback image server (and nothing else: see conftest)."""
    return ImageFetcher(policy(allow_private=True, **overrides))


def test_slow_headers_are_cut_off_by_the_total_budget(image_server: ImageServer) -> None:
    # One header line every 0.2 s: each read is far inside the read timeout, 60 lines take 12 s.
    url = image_server.add_slow_headers("/slow-headers", interval_s=0.2, lines=60)
    start = time.monotonic()
    with pytest.raises(ImageHostError) as info:
        loopback_fetcher(total_timeout_s=1.0, read_timeout_s=0.5).fetch(url)
    elapsed = time.monotonic() - start
    assert info.value.code == "image_host_timeout"
    assert elapsed < 1.5, f"the header phase ran {elapsed:.2f}s past a 1 s budget"


def test_partial_body_ends_within_the_budget(image_server: ImageServer) -> None:
    url = image_server.add_partial_body("/partial", declared=1000, body=PNG[:10], hold_s=20)
    start = time.monotonic()
    with pytest.raises(ImageHostError) as info:
        loopback_fetcher(total_timeout_s=1.0, read_timeout_s=5.0).fetch(url)
    assert info.value.code == "image_host_timeout"
    assert time.monotonic() - start < 1.5


def test_budget_covers_every_redirect_hop(image_server: ImageServer) -> None:
    # Each hop alone is quick (0.3 s); a loop of them exceeds the 1 s budget.
    image_server.routes["/slow-hop"] = _slow_redirect(image_server, "/slow-hop2")
    image_server.routes["/slow-hop2"] = _slow_redirect(image_server, "/slow-hop3")
    image_server.routes["/slow-hop3"] = _slow_redirect(image_server, "/slow-hop")
    start = time.monotonic()
    with pytest.raises(ImageHostError) as info:
        loopback_fetcher(total_timeout_s=1.0, max_redirects=20).fetch(
            image_server.base + "/slow-hop"
        )
    assert info.value.code == "image_host_timeout"
    assert time.monotonic() - start < 1.5


def _slow_redirect(server: ImageServer, location: str) -> Any:
    def route(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.3)
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


# --- redirect limits (item 12) ----------------------------------------------------------------


def _chain(server: ImageServer, name: str, length: int, final: str) -> str:
    """`length` redirects in a row (relative Locations) ending at `final`; the first path."""
    target = final
    for n in range(length, 0, -1):
        server.add_redirect(f"/{name}-{n}", target)
        target = f"/{name}-{n}"
    return target


def test_max_redirects_allows_exactly_that_many(image_server: ImageServer) -> None:
    image_server.add_bytes("/chain-end.png", PNG)
    start = image_server.base + _chain(image_server, "three", 3, "/chain-end.png")
    assert loopback_fetcher(max_redirects=3).fetch(start).data == PNG
    with pytest.raises(TooManyRedirects) as info:
        loopback_fetcher(max_redirects=2).fetch(start)
    assert (info.value.status, info.value.code) == (400, "too_many_redirects")


def test_redirect_chain_ending_at_loopback_is_forbidden(
    image_server: ImageServer, internet: FakeInternet
) -> None:
    start = _chain(image_server, "toloop", 3, "http://127.0.0.1:8500/")
    before = len(image_server.hits)
    with pytest.raises(ForbiddenImageUrl, match="loopback"):
        fetcher().fetch("http://images.test" + start)
    assert [path for path, _ in image_server.hits[before:]] == [f"/toloop-{n}" for n in (1, 2, 3)]
    assert internet.attempts == [(PUBLIC, 80)]  # one kept-alive connection, never loopback


# --- allow-list entries may be origins (item 11) ----------------------------------------------


@pytest.fixture
def other_server() -> Iterator[ImageServer]:
    with serving_images() as server:
        yield server


def test_an_origin_entry_pins_scheme_host_and_port(
    image_server: ImageServer, other_server: ImageServer
) -> None:
    good = image_server.add_bytes("/origin.png", PNG)
    other = other_server.add_bytes("/origin.png", PNG)
    allow = (image_server.base,)
    assert loopback_fetcher(allow_hosts=allow).fetch(good).data == PNG
    with pytest.raises(ForbiddenImageUrl, match="allow-list"):
        loopback_fetcher(allow_hosts=allow).fetch(other)
    # A redirect from the allowed origin to another port on the same host is refused too.
    bounce = image_server.add_redirect("/bounce", other)
    with pytest.raises(ForbiddenImageUrl, match="allow-list"):
        loopback_fetcher(allow_hosts=allow).fetch(bounce)
    assert other_server.hits == []
    # A bare host entry still allows every port of that host.
    assert loopback_fetcher(allow_hosts=("127.0.0.1",)).fetch(other).data == PNG


def test_a_stalled_tls_handshake_is_cut_off_by_the_budget() -> None:
    # A host that accepts the TCP connection and never answers the ClientHello.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(ImageHostError) as info:
            loopback_fetcher(total_timeout_s=0.8, connect_timeout_s=5.0).fetch(
                f"https://127.0.0.1:{port}/x.png"
            )
    assert info.value.code == "image_host_timeout"
    assert time.monotonic() - start < 1.3
