"""bench/slowhost.py, the benchmark's distant and hostile image host, as a real process on
loopback: it delays and dribbles as its URLs say, serves the files unchanged, keeps connections
alive, and holds hundreds of slow requests at once. Gross timing bounds only."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.images import write_photos
from bench.slowhost import MAX_WAIT_S, Route, SlowHost, parse_path, start_slowhost


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"), 2)


@pytest.fixture(scope="module")
def host(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("slowhost") / "slowhost.log"
    proc, base = start_slowhost(photos[0].parent, log, jitter=0.2)
    try:
        yield base
    finally:
        proc.stop()


def _connect(base: str) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)


def _get(base: str, path: str) -> tuple[int, bytes, float]:
    conn = _connect(base)
    try:
        started = time.monotonic()
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


def test_paths_name_a_file_and_its_timing() -> None:
    assert parse_path("/photo-0.jpg") == Route("photo-0.jpg")
    assert parse_path("/delay/500/photo-0.jpg?x=1") == Route("photo-0.jpg", delay_s=0.5)
    assert parse_path("/dribble/6.5/photo-0.jpg") == Route("photo-0.jpg", dribble_s=6.5)
    assert parse_path("/delay/9999999/a.jpg") == Route("a.jpg", delay_s=MAX_WAIT_S)
    for bad in ("/../etc/passwd", "/delay/x/a.jpg", "/sub/a.jpg", "/", "/stall/1/a.jpg"):
        assert parse_path(bad) is None, bad


def test_jitter_spreads_each_delay_within_its_fraction() -> None:
    host = SlowHost({"a.jpg": b"x"}, jitter=0.2, seed=1)
    delays = [host.delay_of(Route("a.jpg", delay_s=0.5)) for _ in range(2000)]
    assert 0.4 <= min(delays) < 0.42
    assert 0.58 < max(delays) <= 0.6
    assert host.delay_of(Route("a.jpg")) == 0.0


def test_files_come_back_unchanged_on_one_kept_alive_connection(
    host: str, photos: list[Path]
) -> None:
    conn = _connect(host)
    try:
        for photo in photos:
            conn.request("GET", f"/delay/10/{photo.name}")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type") == "image/jpeg"
            assert response.read() == photo.read_bytes()
            assert not response.will_close
    finally:
        conn.close()


def test_a_delayed_answer_comes_late_and_an_undelayed_one_does_not(host: str) -> None:
    _, _, at_once = _get(host, "/photo-0.jpg")
    status, body, late = _get(host, "/delay/600/photo-0.jpg")
    assert status == 200
    assert body
    assert late >= 0.45  # 600 ms - 20 % jitter, less a little clock slack
    assert at_once < late


def test_a_dribbled_body_arrives_one_byte_a_tick_and_completes_at_the_end(
    host: str, photos: list[Path]
) -> None:
    port = urlsplit(host).port or 0
    arrivals: list[tuple[float, int]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /dribble/2/photo-0.jpg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
            arrivals.append((time.monotonic() - started, len(data)))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == photos[0].read_bytes()
    # 2 s at 0.5 s a tick: 3 single bytes, then the rest with the 4th tick, 2 s after the head.
    before_last = [n - len(head) - 4 for t, n in arrivals if t < 1.8]
    assert max(before_last) <= 3, arrivals
    assert arrivals[-1][0] >= 1.8, arrivals
    assert len(arrivals) >= 4, arrivals


def test_hundreds_of_slow_requests_wait_at_once(host: str) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda _: _get(host, "/delay/1000/photo-1.jpg"), range(200)))
    assert [status for status, _, _ in answers] == [200] * 200
    # One after another they would take 200 s; together about one delay.
    assert time.monotonic() - started < 30


def test_unknown_files_and_other_methods_are_refused(host: str) -> None:
    assert _get(host, "/delay/10/nope.jpg")[0] == 404
    assert _get(host, "/../x")[0] == 404
    conn = _connect(host)
    try:
        conn.request("POST", "/photo-0.jpg", body=b"{}")
        assert conn.getresponse().status == 405
    finally:
        conn.close()
