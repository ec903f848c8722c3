"""SSRF-safe image fetching: the gateway downloads URLs chosen by strangers.

Per hop: parse and vet the URL, resolve the name once, vet every address, connect to exactly
the vetted address (TLS still verifies the certificate against the name), read at most the byte
cap, and vet redirects the same way. One time budget covers the whole fetch: every phase of
every hop (DNS, connect, TLS, response headers, body) ends when it runs out. Proxy variables are
never read. A connection whose answer was read whole is kept for the next request to the same
name at the same freshly vetted address (fetchpool.py), so far hosts cost no new handshakes.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import time
import weakref
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
from gateway.fetchpool import ConnectionPool, Key, hung_up
from gateway.membudget import charge_fetched
from gateway.netguard import IPAddress, Resolver, host_allowed, pick_address, system_resolver
from gateway.resolve import DnsResolver
from gateway.settings import Settings
from gateway.watchdog import Watchdog

MAX_URL_LENGTH = 2048
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
# A timeout this close to the request's deadline counts as that deadline running out.
_SLACK_S = 0.05
# A redirect's body is read (so its connection can carry the next hop) only if it is this
# short and arrives this soon; otherwise the connection is closed, as it always was.
_DRAIN_BYTES = 64 * 1024
_DRAIN_WAIT_S = 0.5


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
    keepalive: int = Settings.fetch_keepalive
    """Idle connections kept for reuse, all hosts together (0: a new connection per request)."""

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
            keepalive=settings.fetch_keepalive,
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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a pre-vetted address, whatever the Host header says."""

    def __init__(
        self, address: IPAddress, target: Target, timeout: float, tls: ssl.SSLContext
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = address
        self.tls = tls
        # The current request's watchdog; each request on a kept connection arms a fresh one.
        self.watchdog: Watchdog | None = None

    def connect(self) -> None:
        assert self.watchdog is not None
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
        assert self.watchdog is not None
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
        pool: ConnectionPool[_PinnedHTTPConnection] | None = None,
    ) -> None:
        self.policy = policy
        # getaddrinfo has no timeout and cannot be cancelled: DnsResolver gives each look-up a
        # thread under caps, so a dead name server delays only look-ups of its own names.
        # A plain function is wrapped; the fetcher owns (and closes) its resolver either way.
        self.dns = resolver if isinstance(resolver, DnsResolver) else DnsResolver(resolver)
        self.tls = tls or ssl.create_default_context()
        self.pool = pool if pool is not None else ConnectionPool(policy.keepalive)
        # A fetcher dropped without close() (a script, a test) still closes its idle sockets.
        weakref.finalize(self, self.pool.close)

    def close(self) -> None:
        self.dns.close()
        self.pool.close()

    def connection_counts(self) -> dict[str, int]:
        """Connections to image hosts so far: new (opened), reused, stale (see fetchpool)."""
        return self.pool.counts()

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
        # Only now, with this request's address vetted, may a connection kept for it serve.
        key: Key = (target.scheme, target.host, target.port, address)
        idle = self.pool.take(key)
        if idle is not None:
            try:
                return self._exchange(idle, key, target, deadline, reused=True)
            except _HungUp:
                self.pool.note("stale")  # closed by the host while idle: the GET goes again
        conn = self._connection(address, target, deadline)
        return self._exchange(conn, key, target, deadline, reused=False)

    def _exchange(
        self, conn: _PinnedHTTPConnection, key: Key, target: Target, deadline: float, reused: bool
    ) -> bytes | str:
        """The request on `conn` under a fresh watchdog; `conn` goes back to the pool only if
        its answer was read whole, in time, and the host keeps the connection open."""
        watchdog = Watchdog(deadline)
        conn.watchdog = watchdog
        response: http.client.HTTPResponse | None = None
        clean = False
        try:
            if reused:
                self._rearm(conn, watchdog, deadline)
            response, sock = self._request(conn, target)
            if reused:
                self.pool.note("reused")
            result, clean = self._handle(response, sock, deadline)
        except Exception as exc:
            if reused and response is None and hung_up(exc) and not watchdog.fired:
                raise _HungUp from exc
            translated = _translate(exc, watchdog.fired)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            watchdog.cancel()  # from here on, nothing else touches the socket
            self._release(conn, key, response, clean and not watchdog.fired)
        if watchdog.fired:  # a cut body can look complete when the host sent no length
            raise _out_of_time()
        return result

    def _rearm(self, conn: _PinnedHTTPConnection, watchdog: Watchdog, deadline: float) -> None:
        """A kept connection's socket under this request's watchdog and timeouts."""
        assert conn.sock is not None
        watchdog.watch(conn.sock)
        conn.sock.settimeout(min(self.policy.read_timeout_s, _remaining(deadline)))

    def _release(
        self,
        conn: _PinnedHTTPConnection,
        key: Key,
        response: http.client.HTTPResponse | None,
        reusable: bool,
    ) -> None:
        if response is not None:
            response.close()
        if reusable:
            conn.watchdog = None
            self.pool.give(key, conn)
        else:
            conn.close()

    def _handle(
        self, response: http.client.HTTPResponse, sock: socket.socket, deadline: float
    ) -> tuple[bytes | str, bool]:
        """The body or a redirect's Location, and whether the connection can carry another."""
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise ImageHostError("image host sent a redirect without a Location")
            return location, self._drain(response, sock, deadline)
        if response.status != 200:
            raise ImageHostError(f"image host answered HTTP {response.status}")
        body = self._read_body(sock, response, deadline)
        return body, _read_whole(response) and not response.will_close

    def _drain(
        self, response: http.client.HTTPResponse, sock: socket.socket, deadline: float
    ) -> bool:
        """Read a redirect's short body so its connection can carry the next hop; False (the
        connection is closed, the redirect followed all the same) if it is long or slow."""
        if response.will_close or (response.length or 0) > _DRAIN_BYTES:
            return False
        try:
            sock.settimeout(min(self.policy.read_timeout_s, _DRAIN_WAIT_S, _remaining(deadline)))
            extra = response.read(_DRAIN_BYTES + 1)
        except (OSError, http.client.HTTPException, GatewayError):
            return False
        return len(extra) <= _DRAIN_BYTES and _read_whole(response)

    def _resolve(self, host: str, port: int, deadline: float) -> list[str]:
        timeout = min(self.policy.connect_timeout_s, _remaining(deadline))
        return self.dns.resolve(host, port, timeout)

    def _connection(
        self, address: IPAddress, target: Target, deadline: float
    ) -> _PinnedHTTPConnection:
        timeout = min(self.policy.connect_timeout_s, _remaining(deadline))
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        self.pool.note("new")
        return cls(address, target, timeout, self.tls)

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
        if response.length:  # http.client's read1 ends quietly when the host hangs up early
            raise ImageHostError(
                f"image host closed the connection {response.length} bytes before the end "
                "of the image it announced (Content-Length)"
            )
        return bytes(body)


def _read_whole(response: http.client.HTTPResponse) -> bool:
    """True once the body was read to its end: its Content-Length, or the last chunk."""
    return response.length == 0 if response.length is not None else response.isclosed()


class _HungUp(Exception):
    """A kept connection the host had closed: nothing of an answer came, so GET again."""


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
