"""A tiny real DNS server (UDP, stdlib only) for tests of the gateway's name look-ups.

It answers A queries for the names it is given, answers other types of those names with no
records (so getaddrinfo's parallel AAAA query ends at once), never answers names under the
"silent" suffixes (a dead name server), and answers names under the "slow" suffixes late.
Anything else is NXDOMAIN.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter

_TYPE_A = 1
_CLASS_IN = 1
_NXDOMAIN = 3


def _parse_question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset of the question) of a query's first question."""
    labels: list[str] = []
    offset = 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    qtype, _qclass = struct.unpack("!HH", packet[offset + 1 : offset + 5])
    return ".".join(labels), qtype, offset + 5


def _answer(packet: bytes, end: int, address: str | None, rcode: int = 0) -> bytes:
    """A response echoing the question, with one A record if `address` is given."""
    query_id, flags = struct.unpack("!HH", packet[:4])
    # QR, authoritative, recursion available; keep the query's RD bit.
    out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    header = struct.pack("!HHHHHH", query_id, out_flags, 1, 1 if address else 0, 0, 0)
    body = packet[12:end]
    if address:
        # Name as a pointer to the question (offset 12), TTL 60 s.
        body += struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, 60, 4)
        body += socket.inet_aton(address)
    return header + body


def _under(name: str, suffixes: dict[str, float] | tuple[str, ...]) -> str | None:
    return next((s for s in suffixes if name == s or name.endswith("." + s)), None)


class TinyNameServer:
    """Serves on a UDP socket until close(); counts the queries it saw per name."""

    def __init__(
        self,
        addresses: dict[str, str],
        silent: tuple[str, ...] = (),
        slow: dict[str, float] | None = None,
        bind: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.addresses = addresses
        self.silent = silent
        self.slow = slow or {}
        self.queries: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(bind)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tiny-dns", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def names_under(self, suffix: str) -> int:
        """How many distinct names under `suffix` were asked for."""
        with self._lock:
            return sum(1 for name in self.queries if _under(name, (suffix,)))

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                packet, client = self._sock.recvfrom(4096)
            except OSError:
                return  # closed
            with contextlib.suppress(Exception):  # a malformed query is dropped
                self._handle(packet, client)

    def _handle(self, packet: bytes, client: tuple[str, int]) -> None:
        name, qtype, end = _parse_question(packet)
        with self._lock:
            self.queries[name] += 1
        if _under(name, self.silent):
            return
        known = name in self.addresses
        address = self.addresses.get(name) if qtype == _TYPE_A else None
        reply = _answer(packet, end, address, 0 if known else _NXDOMAIN)
        delay_key = _under(name, self.slow)
        if delay_key is None:
            self._sock.sendto(reply, client)
            return
        timer = threading.Timer(self.slow[delay_key], self._send_late, (reply, client))
        timer.daemon = True
        timer.start()

    def _send_late(self, reply: bytes, client: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # closed meanwhile
            self._sock.sendto(reply, client)
