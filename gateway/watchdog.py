"""Fetch watchdogs: each fetch's time budget, enforced on its socket whatever phase it is in.

One thread runs every watchdog whose deadline came; a watchdog shuts its socket down, which
wakes any read blocked on it at once.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time


class _Alarms:
    """One thread for every fetch's time budget: it runs each watchdog whose deadline came.

    A threading.Timer per hop cost a thread start and ~0.2 ms of CPU per fetch. Cancelled
    watchdogs stay queued until their deadline and are dropped then (a cancel is one flag).
    """

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Watchdog]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, watchdog: Watchdog) -> None:
        with self._cond:
            heapq.heappush(self._queue, (deadline, next(self._order), watchdog))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fetch-watchdog", daemon=True
                )
                self._thread.start()
            elif self._queue[0][2] is watchdog:
                self._cond.notify()  # earlier than what the thread sleeps for

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(wait)
                _, _, due = heapq.heappop(self._queue)
            due.expire()


_ALARMS = _Alarms()


class Watchdog:
    """Shuts a hop's socket down when the fetch's budget runs out, whatever phase it is in.

    Socket timeouts bound each read, not a phase: a host that sends one header line per second
    would never trip them. Shutting the socket down wakes any blocked read at once.
    """

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        _ALARMS.add(deadline, self)

    def watch(self, sock: socket.socket) -> None:
        """Guard `sock` from now on (TLS replaces the TCP socket with a wrapped one)."""
        with self._lock:
            self._sock = sock
            if self.fired:
                _shutdown(sock)

    def expire(self) -> None:
        """The budget ran out (the alarm thread calls this; a no-op once cancelled)."""
        with self._lock:
            if self._done:
                return
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def cancel(self) -> None:
        """Stop guarding; after this returns the watchdog never touches the socket again."""
        with self._lock:
            self._done = True
            self._sock = None  # the alarm queue keeps this object until its deadline


def _shutdown(sock: socket.socket) -> None:
    # Already closed or never connected: nothing left to wake.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
