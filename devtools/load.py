"""Bounded closed-loop load on a dyno (`ClosedLoop`, which tests/scaleout's load and the bench's
keep-alive client, bench/loadclient.py, share too), every request classified.

Each client opens a new connection per request (as Heroku's router does), or with
`keep_alive` keeps one HTTP/1.1 connection for as long as the dyno does (as a router or proxy
with upstream keep-alive does), and records: ok (200), shed (503 with Retry-After), refused (the
connection was not accepted: the dyno is going away), failed (any other answer), lost (accepted,
then reset or no answer) and closed (keep-alive only: the dyno closed the idle connection with a
clean FIN while the request was on its way, the race every keep-alive client must retry on a
new connection, RFC 9112 section 9.3.1).
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

from devtools.processes import REPO_ROOT

SAMPLE = REPO_ROOT / "docs" / "samples" / "red-circle.png"
BODY = json.dumps({"image_b64": base64.b64encode(SAMPLE.read_bytes()).decode()}).encode()
PATH = "/v1/models/shapes:predict"


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    kind: str  # ok, shed, refused, failed, lost, closed
    detail: str = ""
    closing: bool = False
    """The answer said `Connection: close`."""


@dataclass
class ClosedLoop:
    """`clients` threads on `port`, each running `client(index)` until stop() (or until it
    returns): the closed loop every load of the tests and the bench shares. A subclass records
    the answers."""

    port: int
    clients: int = 4
    stop_timeout_s: float = field(default=30.0, kw_only=True)
    _stop: threading.Event = field(default_factory=threading.Event, kw_only=True, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, kw_only=True, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, kw_only=True, repr=False)

    def client(self, index: int) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        for i in range(self.clients):
            thread = threading.Thread(target=self.client, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """As halt(); a client still running after that is an error."""
        stopped = self.halt(timeout)
        assert stopped, "a load client hung"

    def halt(self, timeout: float | None = None) -> bool:
        """Stop sending and wait for the requests in flight, `timeout` (else stop_timeout_s) in
        all, not per client; whether every client has ended (they are daemon threads)."""
        self._stop.set()
        return self._join(self.stop_timeout_s if timeout is None else timeout)

    @property
    def ended(self) -> bool:
        """Every client thread has returned."""
        return not any(t.is_alive() for t in self._threads)

    def wait_done(self, timeout: float) -> None:
        """Until every client has stopped by itself, at most `timeout`."""
        self._join(timeout)
        self.stop()

    def _join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.ended


@dataclass
class Load(ClosedLoop):
    """`clients` threads sending predictions to `port` until stop() (or each is refused)."""

    stop_when_refused: bool = True
    bodies: tuple[bytes, ...] = (BODY,)
    """Client i sends bodies[i % len(bodies)]."""
    keep_alive: bool = False
    """Each client keeps its connection between requests (a new one once the dyno closed it)."""
    outcomes: list[Outcome] = field(default_factory=list)

    def client(self, index: int) -> None:
        body = self.bodies[index % len(self.bodies)]
        kept = KeptConnection(self.port) if self.keep_alive else None
        try:
            while not self._stop.is_set():
                outcome = kept.request(body) if kept else one_request(self.port, body)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.kind == "refused" and self.stop_when_refused:
                    return
                if outcome.kind in ("shed", "refused"):
                    self._stop.wait(0.1)  # a polite client backs off (Retry-After: 1)
        finally:
            if kept:
                kept.close()

    def counts(self, after: float = 0.0) -> dict[str, int]:
        kinds = ("ok", "shed", "refused", "failed", "lost", "closed")
        chosen = [o for o in self.outcomes if o.started >= after]
        counts = {kind: sum(o.kind == kind for o in chosen) for kind in kinds}
        counts["sent"] = len(chosen) - counts["refused"]
        return counts

    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind in ("failed", "lost")]


def url_body(url: str) -> bytes:
    """A prediction request for the image at `url` (the gateway fetches it)."""
    return json.dumps({"image_url": url}).encode()


def one_request(port: int, body: bytes = BODY, timeout: float = 20) -> Outcome:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as exc:
            return Outcome(started, time.monotonic(), "refused", repr(exc))
        try:
            conn.request("POST", PATH, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(started, time.monotonic(), "lost", repr(exc))
        closing = (response.getheader("Connection") or "").lower() == "close"
        kind = classify(response, payload)
        return Outcome(started, time.monotonic(), kind, payload[:200].decode(), closing)
    finally:
        conn.close()


class KeptConnection:
    """One HTTP/1.1 connection reused for request after request, as urllib3's pool or nginx's
    upstream keep-alive do: before reuse it checks whether the server has closed it (readable at
    rest means a FIN or stray bytes) and connects anew if so."""

    def __init__(self, port: int, timeout: float = 20) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, body: bytes = BODY) -> Outcome:
        started = time.monotonic()
        reused = self.conn.sock is not None and not self._dropped()
        if not reused:
            self.conn.close()
            try:
                self.conn.connect()
            except OSError as exc:
                return Outcome(started, time.monotonic(), "refused", repr(exc))
        try:
            self.conn.request("POST", PATH, body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            return Outcome(started, time.monotonic(), _failure_kind(exc, reused), repr(exc))
        closing = (response.getheader("Connection") or "").lower() == "close"
        if closing:
            self.conn.close()
        kind = classify(response, payload)
        return Outcome(started, time.monotonic(), kind, payload[:200].decode(), closing)

    def _dropped(self) -> bool:
        assert self.conn.sock is not None
        readable, _, _ = select.select([self.conn.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.conn.close()


def _failure_kind(exc: Exception, reused: bool) -> str:
    """closed: a reused connection ended with a clean FIN before any byte of an answer (the
    server closed it idle while the request was on its way); anything else, a reset above all,
    is lost. http.client's RemoteDisconnected subclasses ConnectionResetError without an errno;
    a real reset carries ECONNRESET (or EPIPE on send)."""
    clean_eof = isinstance(exc, http.client.RemoteDisconnected) and exc.errno is None
    if reused and clean_eof:
        return "closed"
    return "lost"


def classify(response: http.client.HTTPResponse, payload: bytes) -> str:
    if response.status == 200:
        return "ok"
    if response.status == 503 and response.getheader("Retry-After"):
        return "shed"
    del payload
    return "failed"


def drain_times(log: str) -> dict[str, float]:
    """When the gateway's drain began ("stop signal") and ended ("stopped"), wall-clock seconds
    (time.time()), from its JSON log lines (prefixed or not)."""
    times: dict[str, float] = {}
    for line in log.splitlines():
        if '"logger": "gateway.server"' not in line or "{" not in line:
            continue
        record = json.loads(line[line.index("{") :])
        event = record["message"].split(":")[0]
        if event in ("stop signal", "stopped"):
            times[event] = datetime.fromisoformat(record["time"]).timestamp()
    return times


def answered_in_drain(
    outcomes: list[Outcome], times: dict[str, float], signalled: tuple[float, float]
) -> list[Outcome]:
    """The answers to requests sent after the gateway's drain began. `signalled` is
    (time.time(), time.monotonic()) at the signal, to put the log's time on the clients' clock."""
    wall, mono = signalled
    began = mono + times["stop signal"] - wall + DRAIN_FLAG_SLACK_S
    return [o for o in outcomes if o.kind == "ok" and o.started > began]


# The gateway logs "stop signal" just before it sets the drain flag; the log's times are ms.
DRAIN_FLAG_SLACK_S = 0.01
