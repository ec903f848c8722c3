"""Shutdown with kept-alive connections (issue 16, point 5): from the stop signal on, every
request the gateway has read, or that waits in a connection's socket, is answered; the last answer
on a connection says `Connection: close` and the connection then ends with a clean FIN; an idle
connection is closed; no reset, no 500; the drain ends as soon as nothing is busy.

Real waitress (build_server + serve, the production code) and real sockets; at the end the real
gateway process, SIGTERM, six clients that keep their connections and one that pipelines.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devtools.load import Load, answered_in_drain, drain_times, url_body
from gateway import drain
from gateway.app import create_app
from gateway.server import build_server, serve
from gateway.settings import Settings
from tests.gateway.conftest import FakePredictor, Stack, start_gateway
from tests.imagehost import ImageServer, image_bytes
from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow

PATH = "/v1/models/shapes:predict"
BODY = json.dumps({"image_b64": base64.b64encode(image_bytes("PNG", (8, 8))).decode()}).encode()
# Far longer than any drain here: a drain that ends sooner ended because nothing was busy.
SHUTDOWN_TIMEOUT_S = 30.0
DRAIN_ENDS_WITHIN_S = 10.0


def predict_request(body: bytes = BODY, version: str = "1.1", extra: str = "") -> bytes:
    head = (
        f"POST {PATH} HTTP/{version}\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    connection_headers: int = 0

    @property
    def closing(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class RawConnection:
    """An HTTP/1.1 client on a plain socket: requests may be pipelined; a reset raises
    ConnectionResetError out of every read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, *requests: bytes) -> None:
        self.sock.sendall(b"".join(requests))

    def answer(self) -> Answer | None:
        """The next answer, None at a clean end of the connection."""
        status_line = self.reader.readline()
        if not status_line:
            return None
        headers: dict[str, str] = {}
        connection_headers = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
            connection_headers += name.strip().lower() == "connection"
        body = self.reader.read(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, body, connection_headers)

    def ends_cleanly(self) -> bool:
        """The server closed with a FIN and sent nothing more (a reset raises instead)."""
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class Running:
    port: int
    predictor: FakePredictor
    stop: threading.Event
    thread: threading.Thread
    server: Any
    connections: list[RawConnection] = field(default_factory=list)

    def connect(self) -> RawConnection:
        conn = RawConnection(self.port)
        self.connections.append(conn)
        return conn

    def signal_stop(self) -> float:
        """What the SIGTERM handler does; returns when the drain has begun."""
        signalled = time.monotonic()
        self.stop.set()
        wait_for(lambda: self.server.channel_class.drain.active, timeout=5, what="the drain")
        return signalled

    def wait_stopped(self) -> float:
        """Seconds from now until serve() returned."""
        start = time.monotonic()
        self.thread.join(SHUTDOWN_TIMEOUT_S + 5)
        assert not self.thread.is_alive(), "serve() did not return"
        return time.monotonic() - start


@pytest.fixture
def running() -> Iterator[Running]:
    """A gateway (fake predictor, held by its gate until a test opens it) served by waitress."""
    predictor = FakePredictor(gate=threading.Event())
    settings = Settings(port=free_port(), bind_host="127.0.0.1", threads=8)
    server = build_server(create_app(settings, predictor), settings)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop, SHUTDOWN_TIMEOUT_S), daemon=True)
    thread.start()
    gateway = Running(settings.port, predictor, stop, thread, server)
    yield gateway
    assert predictor.gate is not None
    predictor.gate.set()
    stop.set()
    thread.join(SHUTDOWN_TIMEOUT_S + 5)
    for conn in gateway.connections:
        conn.close()


def answered(conn: RawConnection) -> Answer:
    answer = conn.answer()
    assert answer is not None, "the connection ended without an answer"
    return answer


def open_gate(gateway: Running) -> None:
    assert gateway.predictor.gate is not None
    gateway.predictor.gate.set()


def test_requests_in_flight_on_kept_alive_connections_end_with_close(running: Running) -> None:
    conns = [running.connect() for _ in range(4)]
    open_gate(running)
    for conn in conns:  # each connection has served a request and stays open
        conn.send(predict_request())
        first = answered(conn)
        assert (first.status, first.closing) == (200, False)
    assert running.predictor.gate is not None
    running.predictor.gate.clear()
    for conn in conns:
        conn.send(predict_request())
    wait_for(lambda: len(running.predictor.calls) == 8, timeout=10, what="requests in flight")
    running.signal_stop()
    open_gate(running)
    for conn in conns:
        answer = answered(conn)
        assert answer.status == 200, answer
        assert answer.closing, answer.headers
        assert conn.ends_cleanly()
    assert running.wait_stopped() < DRAIN_ENDS_WITHIN_S


def test_an_http_1_0_keep_alive_client_is_told_close_once(running: Running) -> None:
    open_gate(running)
    conn = running.connect()
    conn.send(predict_request(version="1.0", extra="Connection: keep-alive\r\n"))
    kept = answered(conn)
    assert (kept.status, kept.headers.get("connection")) == (200, "Keep-Alive")
    assert running.predictor.gate is not None
    running.predictor.gate.clear()
    conn.send(predict_request(version="1.0", extra="Connection: keep-alive\r\n"))
    wait_for(lambda: len(running.predictor.calls) == 2, timeout=10, what="the request in flight")
    running.signal_stop()
    open_gate(running)
    answer = answered(conn)
    assert (answer.status, answer.connection_headers, answer.closing) == (200, 1, True)
    assert conn.ends_cleanly()


def test_pipelined_requests_are_all_answered_and_only_the_last_says_close(
    running: Running,
) -> None:
    conn = running.connect()
    # More than waitress reads at once (8 KB, and at most two requests ahead of the one being
    # served): at the signal some are parsed, one is half-read, the rest wait in the socket.
    bodies = [BODY + b" " * 3000 for _ in range(8)]
    conn.send(*(predict_request(body) for body in bodies))
    wait_for(lambda: len(running.predictor.calls) == 1, timeout=10, what="the first request")
    running.signal_stop()
    open_gate(running)
    answers = [answered(conn) for _ in bodies]
    assert [a.status for a in answers] == [200] * len(bodies)
    assert [a.closing for a in answers] == [False] * (len(bodies) - 1) + [True]
    assert conn.ends_cleanly()
    assert running.wait_stopped() < DRAIN_ENDS_WITHIN_S


def test_a_request_sent_just_after_the_signal_is_answered_with_close(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client was answered a moment ago: inside its idle grace its next request is read
    # and answered (a long grace so a busy machine cannot turn this into the closing race).
    monkeypatch.setattr(drain, "IDLE_GRACE_S", 10.0)
    open_gate(running)
    conn = running.connect()
    conn.send(predict_request())
    assert answered(conn).status == 200
    running.signal_stop()
    conn.send(predict_request())
    answer = answered(conn)
    assert (answer.status, answer.closing) == (200, True)
    assert conn.ends_cleanly()
    assert running.wait_stopped() < DRAIN_ENDS_WITHIN_S


def test_idle_connections_are_closed_cleanly_and_do_not_hold_the_drain(running: Running) -> None:
    open_gate(running)
    used = running.connect()
    used.send(predict_request())
    assert answered(used).status == 200
    never_used = running.connect()
    wait_for(lambda: len(drain.connections(running.server._map)) == 2, timeout=5, what="accept")
    running.signal_stop()
    assert used.ends_cleanly()
    assert never_used.ends_cleanly()
    assert running.wait_stopped() < DRAIN_ENDS_WITHIN_S


def test_without_a_stop_signal_connections_stay_kept_alive(running: Running) -> None:
    open_gate(running)
    conn = running.connect()
    for _ in range(3):
        conn.send(predict_request())
        answer = answered(conn)
        assert (answer.status, answer.closing) == (200, False)
    conn.send(predict_request(), predict_request())
    assert [answered(conn).closing for _ in range(2)] == [False, False]


# --- the real gateway process, SIGTERM under load ----------------------------------------------

SLOW_IMAGE_S = 0.4


@dataclass
class Pipeliner:
    """One connection, three pipelined requests at a time, until the gateway closes it; then a
    new connection (refused once the gateway has closed its listening socket)."""

    port: int
    sent: list[tuple[float, Answer | None]] = field(default_factory=list)
    """(time the batch was sent, its answer or None if the connection ended first)."""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = RawConnection(self.port)
            except OSError:
                return  # refused: the gateway has gone
            try:
                self._batches(conn)
            except OSError as exc:  # a reset above all
                self.errors.append(repr(exc))
                return
            finally:
                conn.close()

    def _batches(self, conn: RawConnection) -> None:
        while not self._stop.is_set():
            conn.send(*[predict_request()] * 3)
            sent_at = time.monotonic()
            answers = [conn.answer() for _ in range(3)]
            self.sent += [(sent_at, a) for a in answers]
            if any(a is None or a.closing for a in answers):
                if not conn.ends_cleanly():
                    self.errors.append("bytes after the last answer")
                return

    def stop(self) -> None:
        self._stop.set()


def slow_image(image_server: ImageServer) -> str:
    return image_server.add_delayed("/drain-slow.png", image_bytes("PNG", (8, 8)), SLOW_IMAGE_S)


def test_sigterm_with_kept_alive_clients_loses_nothing(
    model_stack: Stack, image_server: ImageServer
) -> None:
    running = start_gateway(
        model_stack, "gateway-drain", DYNOSERVE_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S)
    )
    port = int(running.base.rsplit(":", 1)[1])
    bodies = (BODY, url_body(slow_image(image_server)))
    load = Load(port, clients=6, bodies=bodies, keep_alive=True)
    pipeliner = Pipeliner(port)
    piping = threading.Thread(target=pipeliner.run, daemon=True)
    try:
        load.start()
        piping.start()
        wait_for(lambda: load.counts()["ok"] >= 30, timeout=60, what="load to warm up")
        assert running.process.proc is not None
        signalled = (time.time(), time.monotonic())
        signalled_at = signalled[1]
        running.process.proc.send_signal(signal.SIGTERM)
        code = running.process.proc.wait(SHUTDOWN_TIMEOUT_S + 10)
        exit_s = time.monotonic() - signalled_at
        load.wait_done(timeout=10)
        piping.join(10)
    finally:
        load.stop()
        pipeliner.stop()
        running.process.stop()
    log = running.process.log()
    counts = load.counts()
    assert (counts["failed"], counts["lost"]) == (0, 0), (load.problems()[:5], log[-3000:])
    before = [o for o in load.outcomes if o.started < signalled_at]
    assert all(o.kind == "ok" for o in before), [o for o in before if o.kind != "ok"]
    # Only a request sent after the signal may meet a connection the gateway closed idle.
    assert all(o.started > signalled_at for o in load.outcomes if o.kind == "closed")
    late = answered_in_drain(load.outcomes, drain_times(log), signalled)
    assert all(o.closing for o in late), [o for o in late if not o.closing]
    assert not pipeliner.errors, pipeliner.errors
    piped_before = [a for sent_at, a in pipeliner.sent if sent_at < signalled_at]
    assert piped_before
    assert all(a is not None and a.status == 200 for a in piped_before), piped_before
    assert any(a is not None and a.closing for _, a in pipeliner.sent)
    assert code == 0, log[-3000:]
    assert "shutdown timeout" not in log
    assert exit_s < DRAIN_ENDS_WITHIN_S, exit_s
