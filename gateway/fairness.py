"""Fair shares of the gateway's bounded pools (concurrent fetches, bytes held) between clients.

A client is the API key where there is one, else the client address (on Heroku the router's
last `X-Forwarded-For` entry, which waitress puts in REMOTE_ADDR; see server.py). Shares bite
under contention only: while the pool is at most half used anyone may take from it, so the
original experiment (100 clients from one address, alone) is never refused by its share. Past
that, a client may hold at most its fair share: the pool less a reserve kept for newcomers,
split equally between the clients holding units (itself counted). A flooding client therefore
never holds the reserve, and once others arrive its share shrinks as its own requests finish
(max-min fairness without pre-empting work in progress). A client that holds nothing may take
whatever is free.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.errors import GatewayError, Overloaded, ServiceUnavailable, TooManyRequests

# Up to this fraction of a pool in use, nobody's share is checked.
UNCONTENDED = 0.5
# The fraction of a pool no single client may take while others could want it.
RESERVE = 0.25


def client_identity(api_key: str | None, remote_addr: str | None) -> str:
    """Who a request counts against: a digest of its API key (never the key itself, which
    would end up in logs), else its address."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return "addr:" + (remote_addr or "unknown")


@dataclass(frozen=True)
class Refusal:
    """Why a take was refused: the pool is full (everyone waits) or the client is over its
    share (only it waits). Callers turn these into 503 and 429 respectively."""

    pool: str
    over_share: bool
    held: int
    share: int
    in_use: int
    capacity: int

    @property
    def reason(self) -> str:
        """The metrics label: `over_share` (429) or `full` (503)."""
        return "over_share" if self.over_share else "full"

    def as_error(self, full: type[ServiceUnavailable] = Overloaded) -> GatewayError:
        """The answer: 429 `client_over_share` when it is this client's doing, else `full`
        (a 503); both say Retry-After."""
        if self.over_share:
            return TooManyRequests(f"too many requests: {self.describe()}; retry later")
        return full(f"overloaded: {self.describe()}; retry later")

    def describe(self) -> str:
        if self.over_share:
            return (
                f"this client holds {self.held} of its fair share of {self.share} "
                f"{self.pool} ({self.in_use} of {self.capacity} in use)"
            )
        return f"all {self.capacity} {self.pool} are in use"


class FairShares:
    """`capacity` units of one resource, taken and returned by clients; thread-safe."""

    def __init__(
        self,
        name: str,
        capacity: int,
        on_refusal: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.on_refusal = on_refusal
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    def held(self, client: str) -> int:
        with self._lock:
            return self._held.get(client, 0)

    def share(self, client: str) -> int:
        """The most `client` may hold while the pool is contended."""
        with self._lock:
            return self._share(client)

    def try_take(self, client: str, amount: int) -> Refusal | None:
        """Take `amount` units for `client`, or say why not (nothing taken then)."""
        with self._lock:
            refusal = self._check(client, amount)
            if refusal is None:
                self._held[client] = self._held.get(client, 0) + amount
                self._in_use += amount
                return None
        if self.on_refusal is not None:
            self.on_refusal(refusal)
        return refusal

    def give_back(self, client: str, amount: int) -> None:
        with self._lock:
            left = self._held.get(client, 0) - amount
            if left > 0:
                self._held[client] = left
            else:
                self._held.pop(client, None)
            self._in_use -= amount

    @contextmanager
    def holding(
        self, client: str, amount: int, refuse: Callable[[Refusal], Exception]
    ) -> Iterator[None]:
        """Hold `amount` units for the block; `refuse` builds the error raised when refused."""
        refusal = self.try_take(client, amount)
        if refusal is not None:
            raise refuse(refusal)
        try:
            yield
        finally:
            self.give_back(client, amount)

    def _check(self, client: str, amount: int) -> Refusal | None:
        after = self._in_use + amount
        held = self._held.get(client, 0)
        share = self._share(client)
        # A client holding nothing is never over its share: one large take (a body's bytes)
        # may exceed an equal split of a contended pool without being anyone's flood, and when
        # the pool is full only others can free it (a 503 for everyone, not this client's 429).
        over = held > 0 and held + amount > share
        if after > self.capacity:
            return Refusal(self.name, over, held, share, self._in_use, self.capacity)
        if not over or after <= self.capacity * UNCONTENDED:
            return None
        return Refusal(self.name, True, held, share, self._in_use, self.capacity)

    def _share(self, client: str) -> int:
        holders = len(self._held) + (0 if client in self._held else 1)
        return max(1, int(self.capacity * (1 - RESERVE)) // holders)
