"""A real HTTP image server on loopback for the tests, and small test images."""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 8), color: str = "red") -> bytes:
    """A small solid image in the given Pillow format."""
    out = io.BytesIO()
    mode = "RGBA" if fmt == "WEBP" else "RGB"
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()


Route = Callable[[BaseHTTPRequestHandler], None]


class ImageServer(ThreadingHTTPServer):
    """Serves whatever `routes` say; the backlog is sized so bursts do not stall."""

    request_queue_size = 128
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, dict[str, str]]] = []
        # The paths asked on each accepted connection, in order: a kept-alive one asks several.
        self.connections: list[list[str]] = []
        # Set when the server shuts down, so slow routes end at once instead of sleeping on.
        self.closing = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up early (timeouts under test) are expected; anything else is shown.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_bytes(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            for k, v in (headers or {"Content-Type": "application/octet-stream"}).items():
                h.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        self.routes[path] = route
        return self.base + path

    def add_redirect(self, path: str, location: str, status: int = 302) -> str:
        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", location)
            h.send_header("Content-Length", "0")
            h.end_headers()

        self.routes[path] = route
        return self.base + path

    def add_held(self, path: str, body: bytes, gate: threading.Event, hold_s: float = 30) -> str:
        """`body` (as a JPEG) sent only once `gate` is set or after `hold_s` (nothing if the
        server closes meanwhile): a distant host for as long as a test needs."""

        def route(h: BaseHTTPRequestHandler) -> None:
            gate.wait(hold_s)
            if self.closing.is_set():
                return
            _send(h, body, "image/jpeg")

        self.routes[path] = route
        return self.base + path

    def add_delayed(self, path: str, body: bytes, delay_s: float) -> str:
        """`body` sent `delay_s` after the request: a host that far away."""

        def route(h: BaseHTTPRequestHandler) -> None:
            if self.closing.wait(delay_s):
                return
            _send(h, body, "image/jpeg")

        self.routes[path] = route
        return self.base + path

    def add_slow_headers(self, path: str, interval_s: float, lines: int = 60) -> str:
        """A host that sends its status line, then one header line every `interval_s`, `lines`
        times: each read is quick, so only a budget over the whole header phase stops it."""

        def route(h: BaseHTTPRequestHandler) -> None:
            h.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for n in range(lines):
                h.wfile.flush()
                if self.closing.wait(interval_s):
                    return
                h.wfile.write(f"X-Slow-{n}: {'x' * 8}\r\n".encode())
            h.wfile.write(b"Content-Length: 0\r\n\r\n")
            h.close_connection = True

        self.routes[path] = route
        return self.base + path

    def add_partial_body(self, path: str, declared: int, body: bytes, hold_s: float) -> str:
        """A host that declares Content-Length `declared`, sends `body` (shorter), then stays
        silent for `hold_s` seconds with the connection open."""

        def route(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Length", str(declared))
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
            self.closing.wait(hold_s)
            h.close_connection = True

        self.routes[path] = route
        return self.base + path


def _send(h: BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def requests_on_connection(h: BaseHTTPRequestHandler) -> int:
    """How many requests the connection `h` answers has carried, the current one included."""
    return len(h.asked)  # type: ignore[attr-defined]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.asked: list[str] = []
        server: ImageServer = self.server  # type: ignore[assignment]
        server.connections.append(self.asked)

    def do_GET(self) -> None:
        server: ImageServer = self.server  # type: ignore[assignment]
        server.hits.append((self.path, dict(self.headers.items())))
        self.asked.append(self.path)
        route = server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_error(404)
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving_images() -> Iterator[ImageServer]:
    """An ImageServer answering on a background thread until the block ends."""
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
