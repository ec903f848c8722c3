"""A distant or hostile image host on loopback: the benchmark's JPEGs, answered late or slowly.

Real image hosts are tens to hundreds of milliseconds away; some send slowly on purpose. This
host serves a folder's files over HTTP/1.1 (keep-alive, GET and HEAD) on 127.0.0.1 with the
timing chosen by the URL:

  /<file>                          at once
  /delay/<ms>/<file>               headers and body after <ms> milliseconds, +-jitter
  /dribble/<seconds>/<file>        headers at once, then one byte of the body every
                                   `interval` seconds; the rest of the body arrives with the
                                   last tick, <seconds> after the headers

The jitter is a host setting (a fraction of the delay, uniform, seeded). One asyncio event loop
in one process: a waiting connection costs a socket and a coroutine, not a thread, so hundreds
of concurrent slow requests are cheap. Bounded: at most `max_connections` served at once (more
are accepted but not read until one closes), delays and dribbles capped at MAX_WAIT_S, files
read into memory once at start.

Run alone: python -m bench.slowhost ROOT [--port P] [--jitter 0.2] [--interval 0.5]
(prints "ready http://127.0.0.1:P" once it listens).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.net import free_port, port_open
from devtools.processes import VENV_PYTHON, ManagedProcess, python_env

MAX_WAIT_S = 60.0  # no request is held longer than this, whatever its URL asks
MAX_CONNECTIONS = 2048
MAX_HEADER_BYTES = 16 * 1024
IDLE_TIMEOUT_S = 75.0  # like bench/nginx.py: longer than the gateway's pool keeps connections
BACKLOG = 4096
_ROUTE = re.compile(r"^/(?:(delay|dribble)/(\d+(?:\.\d+)?)/)?([A-Za-z0-9._-]+)$")
_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class Route:
    """What one request path asks for: a file, and how late or how slowly to send it."""

    name: str
    delay_s: float = 0.0
    dribble_s: float = 0.0


def parse_path(path: str) -> Route | None:
    """The route of a request path (query ignored); None when it names nothing servable."""
    match = _ROUTE.match(path.split("?", 1)[0])
    if not match:
        return None
    kind, amount, name = match.groups()
    if kind == "delay":
        return Route(name, delay_s=min(float(amount) / 1000, MAX_WAIT_S))
    if kind == "dribble":
        return Route(name, dribble_s=min(float(amount), MAX_WAIT_S))
    return Route(name)


@dataclass
class SlowHost:
    """The host's files and timing; `handle` serves one connection."""

    files: dict[str, bytes]
    jitter: float = 0.2
    interval_s: float = 0.5
    seed: int = 0
    max_connections: int = MAX_CONNECTIONS
    requests: int = 0
    _rng: random.Random = field(init=False)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._slots = asyncio.Semaphore(self.max_connections)

    @classmethod
    def from_folder(cls, root: Path, **kwargs: float) -> SlowHost:
        files = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.suffix in _TYPES}
        return cls(files, **kwargs)  # type: ignore[arg-type]

    def delay_of(self, route: Route) -> float:
        """The route's delay with this host's jitter: uniform in delay x (1 +- jitter)."""
        if not route.delay_s:
            return 0.0
        return route.delay_s * (1 + self.jitter * (2 * self._rng.random() - 1))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slots:
            try:
                while await self._one_request(reader, writer):
                    pass
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass  # the client went away or stayed silent: nothing to answer
            except asyncio.LimitOverrunError:
                pass  # headers over MAX_HEADER_BYTES: drop the connection
            finally:
                writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read and answer one request; True when the connection stays open for another."""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = [*lines[0].split(" "), "", "", ""][:3]
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        keep = keep and headers.get("content-length", "0") == "0"  # a body here is not read
        self.requests += 1
        route = parse_path(path)
        body = self.files.get(route.name) if route else None
        if method not in ("GET", "HEAD") or route is None or body is None:
            status = "405 Method Not Allowed" if method not in ("GET", "HEAD") else "404 Not Found"
            await _send(writer, _head(status, 0, "text/plain", keep))
            return keep
        await asyncio.sleep(self.delay_of(route))
        writer.write(_head("200 OK", len(body), _type(route.name), keep))
        if method == "HEAD":
            await writer.drain()
        elif route.dribble_s:
            await self._dribble(writer, body, route.dribble_s)
        else:
            await _send(writer, body)
        return keep

    async def _dribble(self, writer: asyncio.StreamWriter, body: bytes, seconds: float) -> None:
        """One byte per tick, the rest with the last tick, `seconds` after the headers."""
        await writer.drain()
        ticks = max(1, round(seconds / self.interval_s))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for tick in range(1, ticks + 1):
            await asyncio.sleep(max(0.0, start + tick * seconds / ticks - loop.time()))
            sent = tick - 1
            await _send(writer, body[sent:] if tick == ticks else body[sent : sent + 1])


def _type(name: str) -> str:
    return _TYPES.get(Path(name).suffix, "application/octet-stream")


def _head(status: str, length: int, content_type: str, keep: bool) -> bytes:
    connection = "keep-alive" if keep else "close"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"Connection: {connection}\r\nServer: bench-slowhost\r\n\r\n"
    ).encode("latin-1")


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def serve(host: SlowHost, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve on 127.0.0.1:`port` until cancelled."""
    server = await asyncio.start_server(
        host.handle, "127.0.0.1", port, backlog=BACKLOG, limit=MAX_HEADER_BYTES
    )
    async with server:
        print(f"ready http://127.0.0.1:{port}", flush=True)
        if ready is not None:
            ready.set()
        await server.serve_forever()


def start_slowhost(root: Path, log: Path, jitter: float = 0.2) -> tuple[ManagedProcess, str]:
    """The host in its own process (so its event loop and the runner never share a GIL),
    serving `root`, ready; returns the process and its base URL."""
    port = free_port()
    argv = [str(VENV_PYTHON), "-m", "bench.slowhost", str(root), "--port", str(port)]
    proc = ManagedProcess([*argv, "--jitter", str(jitter)], log, env=python_env())
    proc.start_ready(lambda: port_open(port), timeout=30)
    return proc, f"http://127.0.0.1:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowhost", description=__doc__)
    parser.add_argument("root", type=Path, help="folder of JPEGs to serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jitter", type=float, default=0.2, help="fraction of each delay")
    parser.add_argument("--interval", type=float, default=0.5, help="dribble tick, seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    host = SlowHost.from_folder(
        args.root, jitter=args.jitter, interval_s=args.interval, seed=args.seed
    )
    if not host.files:
        parser.error(f"no images in {args.root}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
