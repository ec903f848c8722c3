"""`python -m gateway`: read the settings, log JSON, serve with waitress, drain on SIGTERM.

Heroku sends SIGTERM and kills 30 s later. On SIGTERM the gateway stops listening at once,
lets in-flight requests finish (at most shutdown_timeout_s), then exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from types import FrameType

from flask import Flask
from waitress import create_server, wasyncore
from waitress.server import BaseWSGIServer

from gateway import logs
from gateway.app import create_app
from gateway.errors import ConfigError
from gateway.settings import Settings

log = logging.getLogger("gateway.server")
_POLL_S = 0.2


def build_server(app: Flask, settings: Settings) -> BaseWSGIServer:
    """Waitress with a thread for every request admission may hold (so refusals are immediate)
    and a deep backlog (short ones stall bursts)."""
    server: BaseWSGIServer = create_server(
        app,
        host=settings.bind_host,
        port=settings.port,
        threads=settings.worker_threads,
        backlog=settings.backlog,
        # With a request in progress waitress keeps reading its connection only if it may look
        # ahead; that is how it notices a client that hung up (waitress.client_disconnected),
        # so a request still waiting for admission is dropped instead of predicted.
        channel_request_lookahead=1,
        connection_limit=max(1000, settings.worker_threads * 4),
        channel_timeout=settings.client_timeout_s,  # silent clients, incomplete bodies too
        cleanup_interval=1,  # check for them every second, not every 30 s
        asyncore_use_poll=True,  # select() fails beyond 1024 descriptors
        clear_untrusted_proxy_headers=True,
        expose_tracebacks=False,
        ident="dynoserve",
    )
    return server


def serve(server: BaseWSGIServer, stop: threading.Event, shutdown_timeout_s: float) -> None:
    """Run the event loop until `stop` is set, then drain and close."""
    socket_map = server._map  # waitress keeps its channels here; we drive the loop ourselves
    while not stop.is_set():
        wasyncore.loop(timeout=_POLL_S, use_poll=True, map=socket_map, count=1)
    log.info("stop signal: no new connections; draining in-flight requests")
    server.accepting = False
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + shutdown_timeout_s
    while _busy(socket_map) and time.monotonic() < deadline:
        wasyncore.loop(timeout=_POLL_S, use_poll=True, map=socket_map, count=1)
    if _busy(socket_map):
        log.warning("shutdown timeout: closing connections with requests still in flight")
    server.task_dispatcher.shutdown(timeout=1)
    wasyncore.close_all(socket_map)


def _busy(socket_map: dict[int, object]) -> bool:
    """A connection still has a request in progress or a response not yet sent."""
    return any(
        getattr(ch, "requests", None) or getattr(ch, "total_outbufs_len", 0)
        for ch in list(socket_map.values())
    )


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        # Only set the flag: logging here could deadlock on a lock the main thread holds.
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    app = create_app(settings)
    server = build_server(app, settings)
    stop = threading.Event()
    install_signal_handlers(stop)
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
