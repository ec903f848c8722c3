"""Kept-alive connections to image hosts (gateway/fetchpool.py) against a real loopback host.

The host records the paths asked on each connection it accepts, so every test reads how many
connections a run of fetches took and which fetch went on which. Host names get public
addresses from a stub resolver and FakeInternet leads them to the loopback host, as in
test_fetch.py; each test has a host of its own.
"""

from __future__ import annotations

import gzip
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from devtools.tls import self_signed
from gateway.app import create_app
from gateway.errors import DeadlineExceeded, ForbiddenImageUrl, ImageHostError, PayloadTooLarge
from gateway.fetch import FetchPolicy, ImageFetcher
from gateway.fetchpool import IDLE_TIMEOUT_S, PER_KEY, ConnectionPool
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.gateway.test_fetch import (
    PNG,
    PUBLIC,
    PUBLIC_2,
    FakeInternet,
    StubResolver,
    policy,
)
from tests.imagehost import ImageServer, requests_on_connection, serving_images
from tests.support import wait_for


@pytest.fixture
def host() -> Iterator[ImageServer]:
    with serving_images() as server:
        yield server


@pytest.fixture
def internet(monkeypatch: pytest.MonkeyPatch, host: ImageServer) -> FakeInternet:
    fake = FakeInternet(host.server_address[1])
    monkeypatch.setattr(socket, "create_connection", fake)
    return fake


def fetcher(resolver: Any = None, **overrides: Any) -> ImageFetcher:
    return ImageFetcher(policy(**overrides), resolver or StubResolver({"images.test": [[PUBLIC]]}))


def _hang_up_after_first(server: ImageServer, every: bool = False) -> str:
    """A route answered on a connection's first request only: a later one on the same
    connection (or, with `every`, any request after the first answer) gets no answer at all,
    the connection just closes, as a host whose keep-alive timeout ran out."""
    answered = threading.Event()

    def route(h: BaseHTTPRequestHandler) -> None:
        if requests_on_connection(h) > 1 or (every and answered.is_set()):
            h.close_connection = True
            return
        answered.set()
        _send_png(h)

    server.routes["/hangup.png"] = route
    return "/hangup.png"


def _send_png(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(PNG)))
    h.end_headers()
    h.wfile.write(PNG)


# --- reuse ------------------------------------------------------------------------------------


def test_two_fetches_share_one_connection(host: ImageServer, internet: FakeInternet) -> None:
    host.add_bytes("/k.png", PNG)
    images = fetcher()
    assert images.fetch("http://images.test/k.png").data == PNG
    assert images.fetch("http://images.test/k.png").data == PNG
    assert host.connections == [["/k.png", "/k.png"]]
    assert internet.attempts == [(PUBLIC, 80)]
    assert images.connection_counts() == {"new": 1, "reused": 1, "stale": 0}


def test_redirect_hops_reuse_the_connection(host: ImageServer, internet: FakeInternet) -> None:
    host.add_bytes("/final.png", PNG)
    host.routes["/moved"] = _redirect_with_body(b"<p>moved</p>" * 10, "/final.png")
    assert fetcher().fetch("http://images.test/moved").data == PNG
    assert host.connections == [["/moved", "/final.png"]]


def _redirect_with_body(body: bytes, location: str) -> Any:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return route


def test_a_long_redirect_body_is_not_drained(host: ImageServer, internet: FakeInternet) -> None:
    host.add_bytes("/final.png", PNG)
    host.routes["/moved"] = _redirect_with_body(b"x" * 100_000, "/final.png")
    images = fetcher()
    assert images.fetch("http://images.test/moved").data == PNG
    assert images.fetch("http://images.test/final.png").data == PNG
    assert host.connections == [["/moved"], ["/final.png", "/final.png"]]


def test_connection_close_gets_a_new_connection_each_time(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/close.png", PNG, {"Connection": "close"})
    host.add_bytes("/keep.png", PNG)
    images = fetcher()
    for _ in range(2):
        assert images.fetch("http://images.test/close.png").data == PNG
        assert images.pool.idle() == 0
    for _ in range(2):
        assert images.fetch("http://images.test/keep.png").data == PNG
    assert host.connections == [["/close.png"], ["/close.png"], ["/keep.png", "/keep.png"]]


def test_https_connections_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_file, key_file, pem = self_signed(tmp_path, "images.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    with serving_images() as server:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.add_bytes("/tls.png", PNG)
        monkeypatch.setattr(socket, "create_connection", FakeInternet(server.server_address[1]))
        trust = ssl.create_default_context(cadata=pem.decode())
        resolver = StubResolver({"images.test": [[PUBLIC]]})
        images = ImageFetcher(policy(), resolver, tls=trust)
        for _ in range(3):
            assert images.fetch("https://images.test/tls.png").data == PNG
        assert server.connections == [["/tls.png"] * 3]
        images.close()


# --- the address is vetted for every request ----------------------------------------------------


def test_a_changed_dns_answer_never_reuses_the_old_address(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/d.png", PNG)
    resolver = StubResolver({"images.test": [[PUBLIC], [PUBLIC_2], [PUBLIC]]})
    images = fetcher(resolver)
    for _ in range(3):
        assert images.fetch("http://images.test/d.png").data == PNG
    assert resolver.calls == ["images.test"] * 3
    # The second answer (another address) got a connection of its own; the third (the first
    # address again) found the first connection kept for exactly that address.
    assert internet.attempts == [(PUBLIC, 80), (PUBLIC_2, 80)]
    assert host.connections == [["/d.png", "/d.png"], ["/d.png"]]


def test_a_now_private_address_is_refused_despite_a_kept_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/p.png", PNG)
    resolver = StubResolver({"images.test": [[PUBLIC], ["10.0.0.5"], [PUBLIC]]})
    images = fetcher(resolver)
    assert images.fetch("http://images.test/p.png").data == PNG
    with pytest.raises(ForbiddenImageUrl, match="private"):
        images.fetch("http://images.test/p.png")
    # The kept connection was there all along: the public answer again reuses it.
    assert images.fetch("http://images.test/p.png").data == PNG
    assert host.connections == [["/p.png", "/p.png"]]
    assert internet.attempts == [(PUBLIC, 80)]


def test_another_name_at_the_same_address_gets_its_own_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/n.png", PNG)
    images = fetcher(StubResolver({"a.test": [[PUBLIC]], "b.test": [[PUBLIC]]}))
    for name in ("a.test", "b.test", "a.test", "b.test"):
        assert images.fetch(f"http://{name}/n.png").data == PNG
    assert host.connections == [["/n.png", "/n.png"], ["/n.png", "/n.png"]]
    assert [headers["Host"] for _, headers in host.hits] == ["a.test", "b.test"] * 2


# --- only a cleanly finished answer gives its connection back -----------------------------------


@pytest.mark.parametrize("kind", ["declared", "streamed", "decompressed"])
def test_a_body_over_the_cap_never_returns_its_connection(
    host: ImageServer, internet: FakeInternet, kind: str
) -> None:
    big = b"\x89PNG" + b"\0" * 5000
    if kind == "declared":
        host.add_bytes("/big", big)
    elif kind == "streamed":
        host.routes["/big"] = _chunked(big)
    else:
        host.add_bytes("/big", gzip.compress(big), {"Content-Encoding": "gzip"})
    host.add_bytes("/small.png", PNG)
    images = fetcher(max_bytes=1000)
    with pytest.raises(PayloadTooLarge):
        images.fetch("http://images.test/big")
    assert images.pool.idle() == 0
    assert images.fetch("http://images.test/small.png").data == PNG
    assert images.fetch("http://images.test/small.png").data == PNG
    assert host.connections == [["/big"], ["/small.png", "/small.png"]]


def _chunked(body: bytes) -> Any:
    """A kept-alive answer in chunks (no Content-Length to refuse it by)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for start in range(0, len(body), 512):
            piece = body[start : start + 512]
            h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        h.wfile.write(b"0\r\n\r\n")

    return route


def test_a_chunked_body_read_to_its_end_returns_its_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.routes["/chunked.png"] = _chunked(PNG)
    images = fetcher()
    assert images.fetch("http://images.test/chunked.png").data == PNG
    assert images.fetch("http://images.test/chunked.png").data == PNG
    assert host.connections == [["/chunked.png", "/chunked.png"]]


def test_a_fetch_cut_by_its_watchdog_never_returns_its_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_partial_body("/partial", declared=1000, body=PNG[:10], hold_s=30)
    host.add_bytes("/small.png", PNG)
    images = fetcher(total_timeout_s=1.0, read_timeout_s=5.0)
    with pytest.raises(ImageHostError) as info:
        images.fetch("http://images.test/partial")
    assert info.value.code == "image_host_timeout"
    assert images.pool.idle() == 0
    assert images.fetch("http://images.test/small.png").data == PNG
    assert images.fetch("http://images.test/small.png").data == PNG
    assert host.connections == [["/partial"], ["/small.png", "/small.png"]]


def test_a_partial_body_never_returns_its_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    def cut(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(PNG[:10])
        h.close_connection = True

    host.routes["/cut"] = cut
    host.add_bytes("/small.png", PNG)
    images = fetcher()
    # A body cut short of its Content-Length is the host's failure (a model that judges the
    # decode itself must not get it); its connection must not carry another request.
    with pytest.raises(ImageHostError, match="closed the connection 990 bytes before the end"):
        images.fetch("http://images.test/cut")
    assert images.pool.idle() == 0
    assert images.fetch("http://images.test/small.png").data == PNG
    assert images.fetch("http://images.test/small.png").data == PNG
    assert host.connections == [["/cut"], ["/small.png", "/small.png"]]


def test_an_error_status_never_returns_its_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/small.png", PNG)
    images = fetcher()
    with pytest.raises(ImageHostError, match="404"):
        images.fetch("http://images.test/missing.png")
    assert images.pool.idle() == 0
    for _ in range(2):
        assert images.fetch("http://images.test/small.png").data == PNG
    assert host.connections == [["/missing.png"], ["/small.png", "/small.png"]]


# --- watchdogs: a fresh one for every request on a kept connection ------------------------------


def test_a_reused_connection_is_cut_by_its_own_fetchs_budget(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/ok.png", PNG)
    finished = threading.Event()

    def slow_headers(h: BaseHTTPRequestHandler) -> None:
        # One header line every 0.2 s: no read waits long, only a watchdog ends the fetch early.
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(100):
            h.wfile.flush()
            if host.closing.wait(0.2):
                return
            h.wfile.write(b"X-Slow-%d: x\r\n" % n)
        h.wfile.write(b"Content-Length: 0\r\n\r\n")
        finished.set()

    host.routes["/slow-headers"] = slow_headers
    images = fetcher(total_timeout_s=1.0, read_timeout_s=0.5)
    assert images.fetch("http://images.test/ok.png").data == PNG
    with pytest.raises(ImageHostError) as info:
        images.fetch("http://images.test/slow-headers")
    assert info.value.code == "image_host_timeout"
    assert not finished.is_set()  # cut while the host was still sending, not after it finished
    assert host.connections[0] == ["/ok.png", "/slow-headers"]


def test_an_earlier_fetchs_watchdog_never_touches_the_kept_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/ok.png", PNG)
    host.add_delayed("/later.jpg", PNG, delay_s=1.5)
    images = fetcher(total_timeout_s=4.0)
    # The first fetch's watchdog stays queued until its deadline, 1 s from now, while the
    # second fetch waits 1.5 s on the same connection: it must not be cut.
    assert images.fetch("http://images.test/ok.png", deadline=time.monotonic() + 1.0).data == PNG
    assert images.fetch("http://images.test/later.jpg").data == PNG
    assert host.connections == [["/ok.png", "/later.jpg"]]


# --- a host that closed a kept connection ---------------------------------------------------------


def test_a_host_closing_idle_connections_costs_a_new_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    def once(h: BaseHTTPRequestHandler) -> None:
        _send_png(h)  # a kept-alive answer, then the host closes (no Connection: close)
        h.close_connection = True

    host.routes["/once.png"] = once
    images = fetcher()
    assert images.fetch("http://images.test/once.png").data == PNG
    assert images.fetch("http://images.test/once.png").data == PNG
    assert host.connections == [["/once.png"], ["/once.png"]]
    assert images.connection_counts() == {"new": 2, "reused": 0, "stale": 1}


def test_a_request_the_host_hangs_up_on_is_sent_again_on_a_new_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    path = _hang_up_after_first(host)
    images = fetcher()
    assert images.fetch("http://images.test" + path).data == PNG
    assert images.fetch("http://images.test" + path).data == PNG
    assert host.connections == [[path, path], [path]]
    assert images.connection_counts() == {"new": 2, "reused": 0, "stale": 1}


def test_the_request_is_sent_again_once_only(host: ImageServer, internet: FakeInternet) -> None:
    path = _hang_up_after_first(host, every=True)
    images = fetcher()
    assert images.fetch("http://images.test" + path).data == PNG
    with pytest.raises(ImageHostError, match="RemoteDisconnected"):
        images.fetch("http://images.test" + path)
    assert host.connections == [[path, path], [path]]


def test_other_failures_on_a_kept_connection_are_not_retried(
    host: ImageServer, internet: FakeInternet
) -> None:
    def garbled_later(h: BaseHTTPRequestHandler) -> None:
        if requests_on_connection(h) > 1:
            h.wfile.write(b"HTTP/1.1 two hundred\r\n\r\n")
            h.close_connection = True
            return
        _send_png(h)

    host.routes["/garbled.png"] = garbled_later
    images = fetcher()
    assert images.fetch("http://images.test/garbled.png").data == PNG
    with pytest.raises(ImageHostError, match="BadStatusLine"):
        images.fetch("http://images.test/garbled.png")
    assert host.connections == [["/garbled.png", "/garbled.png"]]


# --- bounds ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_connection_expires(host: ImageServer, internet: FakeInternet) -> None:
    host.add_bytes("/t.png", PNG)
    clock = Clock()
    resolver = StubResolver({"images.test": [[PUBLIC]]})
    images = ImageFetcher(policy(), resolver, pool=ConnectionPool(32, clock=clock))
    assert images.fetch("http://images.test/t.png").data == PNG
    clock.now += IDLE_TIMEOUT_S - 0.1
    assert images.fetch("http://images.test/t.png").data == PNG
    clock.now += IDLE_TIMEOUT_S
    assert images.fetch("http://images.test/t.png").data == PNG
    assert host.connections == [["/t.png", "/t.png"], ["/t.png"]]
    assert images.pool.idle() == 1


def test_the_pool_keeps_at_most_its_bound(host: ImageServer, internet: FakeInternet) -> None:
    for name in "abc":
        host.add_bytes(f"/{name}.png", PNG)
    resolver = StubResolver({f"{name}.test": [[PUBLIC]] for name in "abc"})
    images = fetcher(resolver, keepalive=2)
    for name in "abccba":  # a (the oldest) made room for c; b and c are kept
        assert images.fetch(f"http://{name}.test/{name}.png").data == PNG
    assert host.connections == [["/a.png"], ["/b.png", "/b.png"], ["/c.png", "/c.png"], ["/a.png"]]
    assert images.pool.idle() == 2


def test_at_most_a_few_connections_are_kept_per_host(
    host: ImageServer, internet: FakeInternet
) -> None:
    images = fetcher()
    burst = PER_KEY + 2

    def fetch_burst(path: str) -> None:
        gate = threading.Event()
        host.add_held(path, PNG, gate)
        before = len(host.hits)
        threads = [
            threading.Thread(target=images.fetch, args=(f"http://images.test{path}",))
            for _ in range(burst)
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(host.hits) - before == burst, timeout=10, what="the burst held")
        gate.set()
        for thread in threads:
            thread.join(10)

    fetch_burst("/one.jpg")
    assert len(host.connections) == burst
    assert images.pool.idle() == PER_KEY
    fetch_burst("/two.jpg")  # the kept ones carry part of the second burst
    assert len(host.connections) == burst + burst - PER_KEY
    assert images.connection_counts()["reused"] == PER_KEY


def test_keepalive_zero_opens_a_connection_per_fetch(host: ImageServer) -> None:
    url = host.add_bytes("/z.png", PNG)
    for keepalive, expected in (("0", [["/z.png"], ["/z.png"]]), ("32", [["/z.png", "/z.png"]])):
        host.connections.clear()
        env = {"DYNOSERVE_FETCH_ALLOW_PRIVATE": "true", "DYNOSERVE_FETCH_KEEPALIVE": keepalive}
        images = ImageFetcher(FetchPolicy.from_settings(Settings.from_env(env)))
        assert images.fetch(url).data == PNG
        assert images.fetch(url).data == PNG
        images.close()
        assert host.connections == expected
        assert images.pool.idle() == 0


def test_close_closes_the_idle_connections(host: ImageServer, internet: FakeInternet) -> None:
    host.add_bytes("/c.png", PNG)
    images = fetcher()
    assert images.fetch("http://images.test/c.png").data == PNG
    key = ("http", "images.test", 80, ipaddress.ip_address(PUBLIC))
    kept = images.pool.take(key)
    assert kept is not None
    assert kept.sock is not None
    images.pool.give(key, kept)
    images.close()
    assert images.pool.idle() == 0
    assert kept.sock is None


def test_a_deadline_from_the_request_still_applies_on_a_kept_connection(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/ok.png", PNG)
    host.add_delayed("/late.jpg", PNG, delay_s=2.0)
    images = fetcher(total_timeout_s=8.0)
    assert images.fetch("http://images.test/ok.png").data == PNG
    with pytest.raises(DeadlineExceeded):
        images.fetch("http://images.test/late.jpg", deadline=time.monotonic() + 0.4)
    assert host.connections[0] == ["/ok.png", "/late.jpg"]


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_count_new_and_reused_connections(
    host: ImageServer, internet: FakeInternet
) -> None:
    host.add_bytes("/m.png", PNG)
    images = fetcher()
    metrics = Metrics()
    metrics.count_fetch_connections(images.connection_counts)
    for _ in range(3):
        images.fetch("http://images.test/m.png")
    text = generate_latest(metrics.registry).decode()
    assert 'dynoserve_gateway_fetch_connections_total{connection="new"} 1.0' in text
    assert 'dynoserve_gateway_fetch_connections_total{connection="reused"} 2.0' in text
    assert 'dynoserve_gateway_fetch_connections_total{connection="stale"} 0.0' in text


def test_the_app_exports_its_fetchers_connections(tmp_path: Path) -> None:
    settings = Settings(
        model_server="127.0.0.1:1",
        model_config_file=tmp_path / "models.config",
        sync_status_file=tmp_path / "no-status.json",
    )
    app = create_app(settings)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    app.extensions["dynoserve.predictor"].close()
    assert 'dynoserve_gateway_fetch_connections_total{connection="new"} 0.0' in text
