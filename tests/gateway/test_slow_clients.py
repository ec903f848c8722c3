"""Clients that stop sending: waitress (the production server code) closes them within
DYNOSERVE_CLIENT_TIMEOUT_S, and while it waits no worker thread is held."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from gateway.app import create_app
from gateway.server import build_server, serve
from gateway.settings import Settings
from tests.gateway.conftest import FakePredictor
from tests.support import free_port

pytestmark = pytest.mark.slow

CLIENT_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def one_thread_gateway() -> Iterator[str]:
    """A gateway with a single worker thread: anything holding it would block /healthz."""
    settings = Settings(
        port=free_port(), bind_host="127.0.0.1", threads=1, client_timeout_s=CLIENT_TIMEOUT_S
    )
    server = build_server(create_app(settings, FakePredictor()), settings)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop, 5.0), daemon=True)
    thread.start()
    yield f"127.0.0.1:{settings.port}"
    stop.set()
    thread.join(10)


def _send_partial_body(address: str) -> socket.socket:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/models/shapes:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"image_b6'
    )
    return sock


def test_an_incomplete_body_is_closed_within_the_client_timeout(one_thread_gateway: str) -> None:
    sock = _send_partial_body(one_thread_gateway)
    start = time.monotonic()
    with sock:
        # While the body is incomplete the only worker stays free for others.
        with urllib.request.urlopen(f"http://{one_thread_gateway}/healthz", timeout=2) as answer:
            assert answer.status == 200
        assert time.monotonic() - start < 1.0
        reply = sock.recv(65536)  # b"" once the gateway closes the connection
    waited = time.monotonic() - start
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:80]
    # Closed after the timeout, checked once a second: at most about timeout + 1 s (+ slack).
    assert CLIENT_TIMEOUT_S - 0.1 <= waited < CLIENT_TIMEOUT_S + 2.5, waited


def test_many_stalled_bodies_hold_no_worker(one_thread_gateway: str) -> None:
    stalled = [_send_partial_body(one_thread_gateway) for _ in range(20)]
    try:
        start = time.monotonic()
        for _ in range(5):
            with urllib.request.urlopen(f"http://{one_thread_gateway}/healthz", timeout=2) as r:
                assert r.status == 200
        assert time.monotonic() - start < 1.0
    finally:
        for sock in stalled:
            sock.close()
