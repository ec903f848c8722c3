"""SSRF-safe image fetching: the gateway downloads URLs chosen by strangers.

Per hop: parse and vet the URL, resolve the name once, vet every address, connect to exactly
the vetted address (TLS still verifies the certificate against the name), read at most the byte
cap, and vet redirects the same way. One time budget covers the whole fetch: every phase of
every hop (DNS, connect, TLS, response headers, body) ends when it runs out. Proxy variables are
never read.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from gateway import __version__
from gateway.errors import (
    DeadlineExceeded,
    ForbiddenImageUrl,
    GatewayError,
    ImageHostError,
    InvalidImageUrl,
    PayloadTooLarge,
    TooManyRedirects,
)
from gateway.membudget import charge_fetched
from gateway.netguard import IPAddress, Resolver, host_allowed, pick_address, system_resolver
from gateway.resolve import DnsResolver
from gateway.settings import Settings

MAX_URL_LENGTH = 2048
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
# A timeout this close to the request's deadline counts as that deadline running out.
_SLACK_S = 0.05


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one fetch, taken from the settings."""

    max_bytes: int
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_redirects: int
    allow_hosts: tuple[str, ...]
    allow_private: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(
            max_bytes=settings.max_image_bytes,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            read_timeout_s=settings.fetch_read_timeout_s,
            total_timeout_s=settings.fetch_total_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=settings.fetch_allow_hosts,
            allow_private=settings.fetch_allow_private,
        )


@dataclass(frozen=True)
class Target:
    """A vetted URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Fetched:
    """The bytes of a fetched image and where they finally came from."""

    data: bytes
    url: str
    elapsed_s: float


def parse_target(url: str, allow_hosts: tuple[str, ...] = ()) -> Target:
    """Vet a URL's syntax, scheme, credentials and host; no network access."""
    if not isinstance(url, str) or not url:
        raise InvalidImageUrl("image_url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidImageUrl("image_url is too long or contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidImageUrl(f"image_url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ForbiddenImageUrl("image_url must use http or https")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenImageUrl("image_url must not contain credentials")
    host = _ascii_host(parts)
    port = port or (443 if parts.scheme == "https" else 80)
    if not host_allowed(host, allow_hosts, parts.scheme, port):
        raise ForbiddenImageUrl(
            f"image origin {parts.scheme}://{host}:{port} is not on the allow-list"
        )
    path = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_URL_SAFE)
    return Target(parts.scheme, host, port, path)


def _ascii_host(parts: SplitResult) -> str:
    host = parts.hostname
    if not host:
        raise InvalidImageUrl("image_url has no host")
    try:
        return host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError as exc:
        raise InvalidImageUrl("image_url has an invalid host name") from exc


class _Alarms:
    """One thread for every fetch's time budget: it runs each watchdog whose deadline came.

    A threading.Timer per hop cost a thread start and ~0.2 ms of CPU per fetch. Cancelled
    watchdogs stay queued until their deadline and are dropped then (a cancel is one flag).
    """

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, _Watchdog]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, watchdog: _Watchdog) -> None:
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


class _Watchdog:
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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a pre-vetted address, whatever the Host header says."""

    def __init__(
        self,
        address: IPAddress,
        target: Target,
        timeout: float,
        tls: ssl.SSLContext,
        watchdog: _Watchdog,
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = address
        self.tls = tls
        self.watchdog = watchdog

    def connect(self) -> None:
        sock = socket.create_connection((str(self.address), self.port), self.timeout)
        self.watchdog.watch(sock)
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to the vetted address; the certificate is still checked against the host name."""

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        # Handshake after the watchdog holds the TLS socket, so a slow handshake is cut too.
        wrapped = self.tls.wrap_socket(
            self.sock, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.watchdog.watch(wrapped)
        self.sock = wrapped
        wrapped.do_handshake()


class ImageFetcher:
    """Downloads images over http(s) under a FetchPolicy; one instance serves all threads."""

    def __init__(
        self,
        policy: FetchPolicy,
        resolver: Resolver | DnsResolver = system_resolver,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        # getaddrinfo has no timeout and cannot be cancelled: DnsResolver gives each look-up a
        # thread under caps, so a dead name server delays only look-ups of its own names.
        # A plain function is wrapped; the fetcher owns (and closes) its resolver either way.
        self.dns = resolver if isinstance(resolver, DnsResolver) else DnsResolver(resolver)
        self.tls = tls or ssl.create_default_context()

    def close(self) -> None:
        self.dns.close()

    def fetch(self, url: str, deadline: float | None = None) -> Fetched:
        """The image bytes at `url`, or a GatewayError saying why not. `deadline` (monotonic) is
        the request's: the fetch's budget is the policy's total or what is left of it, the
        smaller; when the request's runs out first the error is DeadlineExceeded (stage fetch)."""
        start = time.monotonic()
        budget_end = start + self.policy.total_timeout_s
        if deadline is None or deadline >= budget_end:
            return self._fetch_hops(url, start, budget_end)
        try:
            return self._fetch_hops(url, start, deadline)
        except ImageHostError as exc:
            if exc.code == "image_host_timeout" and time.monotonic() >= deadline - _SLACK_S:
                raise DeadlineExceeded(
                    "the request's deadline (DYNOSERVE_REQUEST_TIMEOUT_S) ran out while its "
                    "image was being fetched",
                    stage="fetch",
                ) from exc
            raise

    def _fetch_hops(self, url: str, start: float, deadline: float) -> Fetched:
        for _hop in range(self.policy.max_redirects + 1):
            target = parse_target(url, self.policy.allow_hosts)
            location = self._fetch_hop(target, deadline)
            if isinstance(location, bytes):
                return Fetched(location, url, time.monotonic() - start)
            url = urljoin(url, location)
        raise TooManyRedirects(
            f"image_url redirected more than {self.policy.max_redirects} times "
            "(DYNOSERVE_FETCH_MAX_REDIRECTS)"
        )

    def _fetch_hop(self, target: Target, deadline: float) -> bytes | str:
        """One request: the body, or the Location of a redirect."""
        resolver = functools.partial(self._resolve, deadline=deadline)
        address = pick_address(target.host, target.port, resolver, self.policy.allow_private)
        watchdog = _Watchdog(deadline)
        conn = self._connection(address, target, deadline, watchdog)
        response: http.client.HTTPResponse | None = None
        try:
            response, sock = self._request(conn, target)
            result = self._handle(response, sock, deadline)
        except Exception as exc:
            translated = _translate(exc, watchdog.fired)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            watchdog.cancel()
            if response is not None:
                response.close()
            conn.close()
        if watchdog.fired:  # a cut body can look complete when the host sent no length
            raise _out_of_time()
        return result

    def _handle(
        self, response: http.client.HTTPResponse, sock: socket.socket, deadline: float
    ) -> bytes | str:
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise ImageHostError("image host sent a redirect without a Location")
            return location
        if response.status != 200:
            raise ImageHostError(f"image host answered HTTP {response.status}")
        return self._read_body(sock, response, deadline)

    def _resolve(self, host: str, port: int, deadline: float) -> list[str]:
        timeout = min(self.policy.connect_timeout_s, _remaining(deadline))
        return self.dns.resolve(host, port, timeout)

    def _connection(
        self, address: IPAddress, target: Target, deadline: float, watchdog: _Watchdog
    ) -> _PinnedHTTPConnection:
        timeout = min(self.policy.connect_timeout_s, _remaining(deadline))
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        return cls(address, target, timeout, self.tls, watchdog)

    def _request(
        self, conn: _PinnedHTTPConnection, target: Target
    ) -> tuple[http.client.HTTPResponse, socket.socket]:
        conn.putrequest("GET", target.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", target.host_header)
        conn.putheader("Accept", "image/*")
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("User-Agent", f"dynoserve-gateway/{__version__}")
        conn.endheaders()
        # Keep the socket: http.client hands it to the response and forgets it on Connection: close.
        sock = conn.sock
        if sock is None:
            raise ImageHostError("image host closed the connection")
        sock.settimeout(self.policy.read_timeout_s)
        return conn.getresponse(), sock

    def _read_body(
        self, sock: socket.socket, response: http.client.HTTPResponse, deadline: float
    ) -> bytes:
        """Read at most max_bytes (after decompression), within the deadline."""
        cap = self.policy.max_bytes
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise PayloadTooLarge(f"image is larger than {cap} bytes")
        decoder = _decoder(response.getheader("Content-Encoding"))
        body = bytearray()
        while True:
            sock.settimeout(min(self.policy.read_timeout_s, _remaining(deadline)))
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            data = decoder.decompress(chunk, cap + 1 - len(body)) if decoder else chunk
            charge_fetched(len(data))  # the request's memory budget: 503/429 past it
            body += data
            if len(body) > cap or (decoder is not None and decoder.unconsumed_tail):
                raise PayloadTooLarge(f"image is larger than {cap} bytes")
        return bytes(body)


def _decoder(encoding: str | None) -> zlib._Decompress | None:
    """A bounded decompressor for hosts that compress although we asked for identity."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return zlib.decompressobj()
    raise ImageHostError(f"image host used an unsupported Content-Encoding {name!r}")


def _translate(exc: Exception, out_of_time: bool) -> Exception:
    """What a failed hop answers: the budget first (a cut socket fails in many ways)."""
    if out_of_time:
        return _out_of_time()
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        return ImageHostError("image host timed out", code="image_host_timeout")
    if isinstance(exc, OSError | http.client.HTTPException | ValueError):
        return ImageHostError(f"image host failed: {type(exc).__name__}")
    return exc


def _out_of_time() -> ImageHostError:
    return ImageHostError("image fetch exceeded its time budget", code="image_host_timeout")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _out_of_time()
    return left
