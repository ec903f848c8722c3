"""A small closed-loop HTTP client for the steps siege cannot run: one logical client keeping
many requests in flight, clients with their own address, multi-megabyte bodies.

The threads are devtools.load's `ClosedLoop` (the dyno and scale-out tests' load): each owns one
keep-alive connection and posts one fixed body back to back until the group is stopped; every
answer's status and latency is tallied (a socket error or timeout is a status too). Bounded: a
fixed number of threads, a per-request timeout, and `finish()` waits for the requests in flight
(at most one per thread), at most the request timeout + 5 s in all, before returning.

A logical client says who it is the way Heroku's router does, with an `X-Forwarded-For` entry
(documentation addresses, 203.0.113.0/24): on loopback every connection comes from 127.0.0.1,
so a gateway that shares capacity by client address can tell clients apart only by that header.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from bench.steps import latency_stats_ms
from devtools.load import ClosedLoop

REQUEST_TIMEOUT_S = 60.0


def client_address(n: int) -> str:
    """The documentation address of logical client `n` (0-253)."""
    return f"203.0.113.{1 + n % 254}"


@dataclass
class Tally:
    """Statuses and latencies of one group's answers; thread-safe."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)  # "503 <error code>" of refusals
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, status: str, latency_s: float, code: str | None = None) -> None:
        with self._lock:
            self.statuses[status] += 1
            self.latencies_s.append(latency_s)
            if code:
                self.codes[f"{status} {code}"] += 1

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def record(self, seconds: float) -> dict[str, Any]:
        """The JSON record of the group over `seconds` of wall time."""
        total = sum(self.statuses.values())
        failures = {s: n for s, n in sorted(self.statuses.items()) if s != "200"}
        return {
            "seconds": round(seconds, 2),
            "requests": total,
            "ok": self.ok,
            "ok_per_s": round(self.ok / seconds, 2) if seconds else 0.0,
            **latency_stats_ms(self.latencies_s),
            "failures": failures,
            "failed": sum(failures.values()),
            "failure_codes": dict(sorted(self.codes.items())),
        }


@dataclass
class KeepAliveLoad(ClosedLoop):
    """devtools.load's closed loop with the bench's client: each of `clients` threads keeps one
    connection to `host`:`port` and posts bodies[i % len(bodies)] to `path` back to back until
    finish(), as the logical client at addresses[i % len(addresses)] (as devtools.load.Load
    spreads its bodies). Build it with `posting`."""

    bodies: tuple[bytes, ...] = field(kw_only=True)
    path: str = field(kw_only=True)
    addresses: Sequence[str] = field(kw_only=True)
    host: str = field(default="127.0.0.1", kw_only=True)
    timeout_s: float = field(default=REQUEST_TIMEOUT_S, kw_only=True)
    tally: Tally = field(default_factory=Tally, kw_only=True)
    _started: float = field(default=0.0, kw_only=True, repr=False)

    @classmethod
    def posting(
        cls,
        endpoint: str,
        body: bytes | Sequence[bytes],
        clients: int,
        addresses: Sequence[str],
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> KeepAliveLoad:
        """`clients` threads posting `body` (one for all, or client i posts body[i % len]) to the
        URL `endpoint`; stopping waits for the requests in flight at most `timeout_s` + 5 s in
        all."""
        parts = urllib.parse.urlsplit(endpoint)
        return cls(
            parts.port or 80,
            clients,
            bodies=(body,) if isinstance(body, bytes) else tuple(body),
            path=parts.path,
            addresses=addresses,
            host=parts.hostname or "127.0.0.1",
            timeout_s=timeout_s,
            stop_timeout_s=timeout_s + 5,
        )

    def start(self) -> Self:
        self._started = time.monotonic()
        return super().start()

    def finish(self) -> dict[str, Any]:
        """Stop sending, wait for the answers in flight, return the group's record (rates over
        the time until the last answer). A client still waiting then is not counted."""
        self.halt()
        return self.tally.record(time.monotonic() - self._started)

    def client(self, index: int) -> None:
        address = self.addresses[index % len(self.addresses)]
        body = self.bodies[index % len(self.bodies)]
        headers = {"Content-Type": "application/json", "X-Forwarded-For": address}
        conn = self._connect()
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                status, keep, code = self._post(conn, body, headers)
                self.tally.add(status, time.perf_counter() - started, code)
                if not keep:
                    conn.close()
                    conn = self._connect()
        finally:
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def _post(
        self, conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
    ) -> tuple[str, bool, str | None]:
        """One request: (status, whether the connection may be reused, the error's code)."""
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            code = error_code(payload) if response.status != 200 else None
            return str(response.status), not response.will_close, code
        except TimeoutError:
            return "timeout", False, None
        except (OSError, http.client.HTTPException):
            return "socket error", False, None


def error_code(payload: bytes) -> str | None:
    """The stable code of a gateway error answer ({"error": {"code": ...}}), if it is one."""
    try:
        found = json.loads(payload)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, str) else None


def run_for(loop: KeepAliveLoad, seconds: float) -> dict[str, Any]:
    """Start `loop`, let it run `seconds`, stop it; its record."""
    loop.start()
    time.sleep(seconds)
    return loop.finish()
