"""Closing kept-alive HTTP/1.1 connections on SIGTERM without losing a request: waitress's
channel and task, taught to drain.

A WSGI app may not send `Connection` (hop-by-hop, PEP 3333: waitress answers 500), and waitress
has no drain of its own, so the decision lives where waitress decides about connections:

- During the drain, an answer says `Connection: close` when its request is the last one the
  connection has brought: nothing more parsed, half-received, or waiting unread in the socket.
  From that decision on the connection reads nothing; waitress closes it once the answer is sent.
  Requests already read are all answered (RFC 9112 section 9.6: `close` goes on the last one).
- A connection with no request is closed once it has been quiet for IDLE_GRACE_S, unless bytes
  wait in its socket (a request on its way in: it is read and answered).
- Closing is a lingering close: FIN first, then read and drop until the client's FIN or
  LINGER_S. Closing a socket with unread bytes sends a reset, and a reset can destroy an answer
  the client has not read yet. A request that crossed our FIN meets a clean close, which HTTP
  clients treat as "retry on a new connection" (RFC 9112 section 9.3.1), never a reset.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import WSGITask

from gateway.deadline import ARRIVED_KEY

IDLE_GRACE_S = 0.5
"""A client that has just been answered is likely sending its next request: give it this long.
A connection quiet for longer when the drain starts is closed at once."""
LINGER_S = 0.5
"""After our FIN, how long bytes the client sent before it saw the FIN are read and dropped (a
request crossing the FIN arrives within a round trip), so that the close never resets."""
_DROP_CHUNKS = 16  # per event loop turn, so one client that keeps sending cannot hold the loop


@dataclass
class Drain:
    """One per server, shared by its connections. Set by the event loop thread on the stop
    signal, read by worker threads when they write a status line (a plain attribute: one write,
    and a worker that reads it late only keeps its connection until the idle sweep)."""

    active: bool = False


class StampedParser(HTTPRequestParser):
    """Waitress's request parser, made when a request's first bytes arrive: it notes when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = time.monotonic()


class DrainingTask(WSGITask):
    """Waitress's WSGI task; during the drain the last answer of a connection says close.
    It also tells the app when its request began to arrive (ARRIVED_KEY)."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        arrived = getattr(self.request, "arrived", None)
        if arrived is not None:
            environ.setdefault(ARRIVED_KEY, arrived)
        return environ

    def build_response_header(self) -> bytes:
        # Called by the worker thread once, just before the status line is written, so the
        # decision sees every request the connection has brought until now.
        if self.channel.answers_last():
            self.set_close_on_finish()  # adds `Connection: close`; waitress closes after the send
            # An HTTP/1.0 keep-alive request would also get `Connection: Keep-Alive` from
            # waitress; the app has its environ already, so the request's own header can go.
            self.request.headers.pop("CONNECTION", None)
        header: bytes = super().build_response_header()
        return header


class DrainingChannel(HTTPChannel):
    """Waitress's connection, able to close gracefully during the drain (see the module)."""

    task_class = DrainingTask
    parser_class = StampedParser
    drain = Drain()  # replaced per server by channel_class()
    will_close: bool  # waitress's (class default False); declared for the type checker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Held by the event loop while it reads and parses, and by a worker while it decides its
        # answer is the last: a request cannot slip in between that decision and the close.
        self.read_lock = threading.Lock()
        self.reading_done = False
        self.linger_until: float | None = None  # monotonic; set once our FIN is sent
        super().__init__(*args, **kwargs)

    # --- worker thread ------------------------------------------------------------------------

    def answers_last(self) -> bool:
        """During the drain: the answer being written is the last; read nothing more."""
        if not self.drain.active:
            return False
        with self.read_lock:
            if len(self.requests) > 1 or self.request is not None or self._unread():
                return False
            self.reading_done = True
            return True

    # --- event loop thread --------------------------------------------------------------------

    def readable(self) -> bool:
        if self.linger_until is not None:
            return True
        return not self.reading_done and bool(super().readable())

    def writable(self) -> bool:
        return self.linger_until is None and bool(super().writable())

    def handle_read(self) -> None:
        if self.linger_until is not None:
            self._drop_input()
            return
        with self.read_lock:
            if not self.reading_done:
                super().handle_read()

    def handle_close(self) -> None:
        """waitress closes a connection it is done with (`will_close`, no request left): during
        the drain send a FIN and linger instead; every other close (errors, the client's FIN,
        the end of the linger) closes at once as waitress does."""
        if self.linger_until is None and self._may_linger():
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # not connected any more: nothing to linger for
            else:
                self.reading_done = True
                self.linger_until = time.monotonic() + LINGER_S
                return
        super().handle_close()

    def _may_linger(self) -> bool:
        return bool(
            self.drain.active and self.will_close and not self.requests and self.socket is not None
        )

    def close_if_idle(self, now: float) -> None:
        """Drain: close the connection if it has no request, has been quiet IDLE_GRACE_S
        (`now` and waitress's `last_activity` are wall-clock) and no bytes wait unread."""
        if self.linger_until is not None or self.reading_done or self.socket is None:
            return
        if self.will_close or self.close_when_flushed or self.requests:
            return
        if self.request is not None or self.total_outbufs_len:
            return
        if now - self.last_activity < IDLE_GRACE_S or self._unread():
            return
        self.will_close = True
        self.handle_close()

    def holds_drain(self) -> bool:
        """Open and not lingering (a request, an answer, or a client inside its idle grace), or
        lingering within LINGER_S."""
        if self.socket is None:
            return False
        return self.linger_until is None or time.monotonic() < self.linger_until

    def finish(self) -> None:
        """End of the drain: drop what a lingering client sent, then close."""
        if self.linger_until is not None and self.socket is not None:
            self._drop_input()
        if self.socket is not None:
            super().handle_close()

    def _drop_input(self) -> None:
        for _ in range(_DROP_CHUNKS):
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the client's FIN (or a dead connection): the close is clean now
                super().handle_close()
                return

    def _unread(self) -> bool:
        """Bytes wait in the socket that waitress has not read (a FIN is not a byte)."""
        sock = self.socket
        if sock is None:
            return False
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # BlockingIOError: nothing waiting; anything else: nothing to answer
            return False


def channel_class(drain: Drain) -> type[DrainingChannel]:
    """The channel class for one server, sharing its `drain`."""

    class Channel(DrainingChannel):
        pass

    Channel.drain = drain
    return Channel


def sweep(socket_map: dict[int, Any]) -> bool:
    """Close idle connections; True while a connection still holds the drain open."""
    now = time.time()
    held = False
    for channel in connections(socket_map):
        channel.close_if_idle(now)
        held = channel.holds_drain() or held
    return held


def connections(socket_map: dict[int, Any]) -> list[DrainingChannel]:
    return [c for c in list(socket_map.values()) if isinstance(c, DrainingChannel)]
