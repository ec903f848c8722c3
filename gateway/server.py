"""`python -m gateway`: read the settings, log JSON, serve with waitress, drain on SIGTERM.

Heroku sends SIGTERM (to every process of the dyno at once) and SIGKILLs 30 s later. On SIGTERM
the gateway loses no request it has accepted: it stops new TCP handshakes on the listening socket
(Linux), accepts the connections already in the kernel's accept queue, then closes the listening
socket (new connections are refused from then on, none is reset). Every request it has read, or
that waits in a connection's socket, is answered; the last answer on each connection says
`Connection: close`, idle kept-alive connections are closed, all without a reset
(gateway/drain.py). It exits 0 as soon as no connection is busy (at most shutdown_timeout_s).
The model server outlives this drain: it ignores SIGTERM and supervisord stops it after the
gateway.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import struct
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from waitress import create_server, wasyncore
from waitress.server import BaseWSGIServer

from envsettings import exit_on_error
from gateway import logs
from gateway.drain import Drain, channel_class, connections, sweep
from gateway.membudget import tune_malloc
from gateway.settings import Settings

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("gateway.server")
_POLL_S = 0.2
# While draining, idle graces and lingers expire on their own: look at them this often.
_DRAIN_POLL_S = 0.05
# After new handshakes stop, those the kernel already answered with SYN-ACK complete within one
# round trip (the Heroku router is in the dyno's region); wait that long before closing.
HANDSHAKE_GRACE_S = 0.1
_SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>


def bind_listener(settings: Settings) -> socket.socket:
    """The listening socket on $PORT, made before the app is built (its imports are most of the
    gateway's start-up, and compete for the CPU with the model server loading at boot): Heroku
    counts its boot timeout (R10) until $PORT is bound. Connections wait in the backlog."""
    family = socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.bind_host, settings.port))
        sock.listen(settings.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def build_server(
    app: Flask, settings: Settings, sock: socket.socket | None = None
) -> BaseWSGIServer:
    """Waitress with a thread for every request admission may hold (so refusals are immediate)
    and a deep backlog (short ones stall bursts); on `sock` when given, else its own socket."""
    where: dict[str, Any] = (
        {"sockets": [sock]} if sock else {"host": settings.bind_host, "port": settings.port}
    )
    server: BaseWSGIServer = create_server(
        app,
        **where,
        threads=settings.worker_threads,
        backlog=settings.backlog,
        # With a request in progress waitress keeps reading its connection only if it may look
        # ahead; that is how it notices a client that hung up (waitress.client_disconnected),
        # so a request still waiting for admission is dropped instead of predicted.
        channel_request_lookahead=1,
        connection_limit=max(1000, settings.worker_threads * 4),
        channel_timeout=settings.client_timeout_s,  # silent clients, incomplete bodies too
        # Waitress spools a body to a temp file before the app sees it, up to 1 GB by default.
        # Bodies up to twice the limit still reach the app (its JSON 413 request_too_large);
        # past that waitress refuses at once (its own plain-text 413), reading nothing more.
        max_request_body_size=2 * settings.max_request_bytes,
        cleanup_interval=1,  # check for them every second, not every 30 s
        asyncore_use_poll=True,  # select() fails beyond 1024 descriptors
        # Heroku's router appends the peer it saw to X-Forwarded-For: with one trusted proxy
        # waitress takes that last entry as REMOTE_ADDR (earlier entries are the client's own
        # words), the address fair shares count by. Without a proxy in front, a client could
        # name any address there: DYNOSERVE_TRUST_X_FORWARDED_FOR=0 then.
        **(
            {
                "trusted_proxy": "*",
                "trusted_proxy_count": 1,
                "trusted_proxy_headers": {"x-forwarded-for"},
            }
            if settings.trust_x_forwarded_for
            else {}
        ),
        clear_untrusted_proxy_headers=True,
        expose_tracebacks=False,
        ident="dynoserve",
    )
    # Waitress wraps the app (clear_untrusted_proxy_headers) and forbids it hop-by-hop headers:
    # the drain lives in waitress's own connection class instead (gateway/drain.py).
    server.channel_class = channel_class(Drain())
    return server


def serve(server: BaseWSGIServer, stop: threading.Event, shutdown_timeout_s: float) -> None:
    """Run the event loop until `stop` is set, then drain and close."""
    socket_map = server._map  # waitress keeps its channels here; we drive the loop ourselves
    while not stop.is_set():
        _loop_once(socket_map)
    log.info("stop signal: no new connections; draining in-flight requests")
    server.channel_class.drain.active = True
    stop_listening(server)
    deadline = time.monotonic() + shutdown_timeout_s
    while sweep(socket_map) and time.monotonic() < deadline:
        # Waitress checks for silent clients (channel_timeout) only while it listens.
        server.maintenance(time.time())
        _loop_once(socket_map, timeout=_DRAIN_POLL_S)
    busy = [c for c in connections(socket_map) if c.holds_drain() and c.linger_until is None]
    if busy:
        log.warning(
            "shutdown timeout: closing connections with requests still in flight",
            extra={"connections": len(busy)},
        )
    server.task_dispatcher.shutdown(timeout=1)
    for channel in connections(socket_map):
        channel.finish()
    wasyncore.close_all(socket_map)


def _loop_once(socket_map: dict[int, Any], timeout: float = _POLL_S) -> None:
    wasyncore.loop(timeout=timeout, use_poll=True, map=socket_map, count=1)


def stop_listening(server: BaseWSGIServer) -> None:
    """Close the listening socket without resetting a connection the kernel has accepted.

    Closing a listening socket resets every connection still in its accept queue: clients that
    connected and sent a request get ECONNRESET. So first stop new handshakes (a socket filter
    drops incoming SYNs: new clients are refused once the socket is closed), let handshakes in
    progress complete, accept everything queued, and only then close.
    """
    if _drop_new_handshakes(server.socket):
        grace_end = time.monotonic() + HANDSHAKE_GRACE_S
        while time.monotonic() < grace_end:
            _loop_once(server._map, timeout=0.01)
    accepted = 0
    while _accept_one(server):
        accepted += 1
    server.accepting = False
    server.del_channel()
    server.socket.close()
    log.info("listening socket closed", extra={"accepted_at_close": accepted})


def _accept_one(server: BaseWSGIServer) -> bool:
    """Accept one queued connection into waitress; False when the queue is empty."""
    try:
        pending = server.accept()
    except OSError:
        return False
    if pending is None:
        return False
    conn, addr = pending
    server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)
    return True


def _drop_new_handshakes(sock: socket.socket) -> bool:
    """Attach a classic BPF filter that drops TCP segments with SYN set and ACK clear (Linux)."""
    program = [
        (0x30, 0, 0, 13),  # ldb [13]: the TCP flags byte
        (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
        (0x15, 0, 1, 0x02),  # jeq #SYN: drop, else keep
        (0x06, 0, 0, 0),  # ret #0: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # ret: keep the whole segment
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("cannot stop new handshakes before closing (%s); closing at once", exc)
        return False
    return True


class _Waker(wasyncore.dispatcher):
    """Readable when a signal arrived (signal.set_wakeup_fd writes a byte): the event loop
    wakes at once instead of at the end of its poll timeout."""

    def __init__(self, socket_map: dict[int, Any]) -> None:
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        super().__init__(self.reader, map=socket_map)

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        self.recv(512)


def install_signal_handlers(stop: threading.Event, server: BaseWSGIServer | None = None) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        # Only set the flag: logging here could deadlock on a lock the main thread holds.
        stop.set()

    if server is not None:
        signal.set_wakeup_fd(_Waker(server._map).writer.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main() -> int:
    with exit_on_error("gateway"):
        settings = Settings.from_env()
    logs.configure(settings.log_level)
    tune_malloc()  # large request buffers get their own mappings, freed for real (membudget.py)
    sock = bind_listener(settings)
    from gateway.app import create_app  # after the bind: Flask, gRPC stubs, Pillow

    app = create_app(settings)
    server = build_server(app, settings, sock)
    stop = threading.Event()
    install_signal_handlers(stop, server)
    log.info(
        "listening on http://%s:%s",
        settings.bind_host,
        server.effective_port,
        extra={"model_server": settings.model_server, "threads": settings.worker_threads},
    )
    try:
        serve(server, stop, settings.shutdown_timeout_s)
    finally:
        app.extensions["dynoserve.predictor"].close()
    log.info("stopped")
    return 0
