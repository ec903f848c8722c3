"""Idle connections to image hosts, kept for the next fetch of the same host (HTTP keep-alive).

The pool never decides where to connect. fetch.py resolves and vets every request (and every
redirect hop) first, then asks for a connection whose key holds that freshly vetted address:
a DNS change or an address now refused never reaches an old connection. Bounded in number
(in total and per key) and in age; a connection the host closed while idle is dropped.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gateway.netguard import IPAddress

# Below the keep-alive timeout of common servers (nginx 75 s, S3 ~20 s or more, Apache 5 s
# closes first and is caught as stale): an older connection is closed, never reused.
IDLE_TIMEOUT_S = 20.0
# Idle connections kept per key: a burst of fetches from one host leaves a few warm, not all.
PER_KEY = 4

Key = tuple[str, str, int, IPAddress]
"""Scheme, host name as sent in Host and SNI, port, vetted address."""


class Reusable(Protocol):
    """What the pool holds: an HTTP connection with the socket it was left with."""

    @property
    def sock(self) -> socket.socket | None: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Reusable)


@dataclass
class _Idle(Generic[C]):
    key: Key
    conn: C
    since: float


class ConnectionPool(Generic[C]):
    """Idle connections by key, newest reused first; thread-safe. `max_idle` 0 keeps none.

    It also counts what happened to connections (`counts`): new (opened), reused (a request
    answered on a pooled one), stale (a pooled one the host had closed meanwhile).
    """

    def __init__(
        self,
        max_idle: int,
        per_key: int = PER_KEY,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_idle = max_idle
        self.per_key = per_key
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._idle: list[_Idle[C]] = []  # oldest first
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def take(self, key: Key) -> C | None:
        """An idle connection for `key` that still looks open, or None."""
        while True:
            with self._lock:
                dropped = self._expire()
                entry = next((e for e in reversed(self._idle) if e.key == key), None)
                if entry is not None:
                    self._idle.remove(entry)
            _close(dropped)
            if entry is None:
                return None
            if not _dropped(entry.conn.sock):
                return entry.conn
            self.note("stale")
            entry.conn.close()

    def give(self, key: Key, conn: C) -> None:
        """Keep `conn` (whose last response was read whole) for the next fetch of `key`."""
        dropped: list[C] = []
        with self._lock:
            if self.max_idle > 0:
                dropped = self._expire()
                victim = self._victim(key)
                if victim is not None:
                    self._idle.remove(victim)
                    dropped.append(victim.conn)
                self._idle.append(_Idle(key, conn, self._clock()))
            else:
                dropped = [conn]
        _close(dropped)

    def close(self) -> None:
        """Close every idle connection (the pool stays usable)."""
        with self._lock:
            dropped = [e.conn for e in self._idle]
            self._idle.clear()
        _close(dropped)

    def idle(self) -> int:
        """How many connections are idle now."""
        with self._lock:
            return len(self._idle)

    def note(self, event: str) -> None:
        with self._lock:
            self._counts[event] += 1

    def counts(self) -> dict[str, int]:
        """Connections by what happened to them: new, reused, stale."""
        with self._lock:
            return {event: self._counts[event] for event in ("new", "reused", "stale")}

    def _victim(self, key: Key) -> _Idle[C] | None:
        """The connection that makes room for one more of `key`: its key's oldest if the key
        has its share, else the oldest of all if the pool is full, else none."""
        same = [e for e in self._idle if e.key == key]
        if len(same) >= self.per_key:
            return same[0]
        return self._idle[0] if len(self._idle) >= self.max_idle else None

    def _expire(self) -> list[C]:
        """Remove (under the lock) connections idle too long; the caller closes them."""
        cutoff = self._clock() - self.idle_timeout_s
        expired = 0
        while expired < len(self._idle) and self._idle[expired].since <= cutoff:
            expired += 1
        gone = [e.conn for e in self._idle[:expired]]
        del self._idle[:expired]
        return gone


def _close(conns: list[C]) -> None:
    for conn in conns:
        conn.close()


def _dropped(sock: socket.socket | None) -> bool:
    """True if an idle connection is no longer usable: closed, or readable (the host's FIN, a
    reset, or bytes nobody asked for), so it must not carry the next request."""
    if sock is None or sock.fileno() < 0:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()  # select() cannot watch descriptors above 1023
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def hung_up(exc: BaseException) -> bool:
    """True for the ways a request on an idle connection fails when the host had closed it:
    nothing of an answer arrived, so the GET can go again on a new connection."""
    # http.client.RemoteDisconnected (an empty status line) is a ConnectionResetError.
    return isinstance(exc, ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError)
