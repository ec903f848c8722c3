"""Host name look-ups for image fetches, so that one host's slow or dead name server delays
only look-ups of that host's names.

getaddrinfo has no timeout and cannot be cancelled: a look-up whose name servers never answer
blocks its thread for glibc's whole retry schedule (5 s x 2 attempts per server by default),
long after the fetch that asked has given up. So every look-up runs in a thread of its own
(a blocked look-up costs a thread, not CPU), its callers wait only their own timeout, and
caps decide how many threads slow name servers may hold:

- concurrent look-ups of one name share one call;
- names under one domain (its registrable part, guessed: see `domain_of`) hold at most
  `per_domain` threads, so a dead name server cannot take them all with random subdomains;
- all look-ups together hold at most `max_threads`;
- a name whose look-up went unanswered for a caller's whole timeout, and for at least
  `unanswered_after_s`, is refused at once for `unanswered_memory_s` instead of making more
  callers wait as long for nothing. (A caller with little budget left gives up early: that
  says nothing about the name servers, so it marks nothing.)

A look-up refused by a cap or the memory, or not answered in time, is 502 `image_host_timeout`.
Answers are not cached: getaddrinfo gives no TTL, and the platform's recursive resolver
already caches by TTL (it also keeps a slow name server's late answer for the next look-up).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import ImageHostError
from gateway.netguard import Resolver, system_resolver

# A thread blocked in getaddrinfo costs its stack (virtual, mostly untouched) and a socket:
# 256 of them added 8 MB of RSS (~32 KB each; tests/gateway/test_resolve_netns.py's probe).
# The cap only bites when hundreds of names hang at once, and then refuses at once.
MAX_THREADS = 256
# A few: enough for a healthy domain's distinct names to resolve side by side.
PER_DOMAIN = 4
# glibc gives up on a dead server after ~10 s; refusing for half that spares callers most of it
# while a name server that recovers is asked again soon.
UNANSWERED_MEMORY_S = 5.0
# Healthy DNS answers in milliseconds, an uncached chain of zones in a few hundred: a second
# without an answer means the name servers are down or silent on purpose.
UNANSWERED_AFTER_S = 1.0
TIMEOUT_CODE = "image_host_timeout"

# Second-level labels under two-letter country codes that are public suffixes (co.uk, com.au).
_PUBLIC_SECOND_LEVEL = frozenset(
    {"ac", "co", "com", "edu", "gob", "go", "gov", "ltd", "me", "ne", "net", "or", "org", "plc"}
)


def domain_of(host: str) -> str:
    """The registrable domain a name probably belongs to (`a.b.example.co.uk` ->
    `example.co.uk`): the unit whose name servers one owner controls.

    A guess without the Public Suffix List: two labels, three under a two-letter country code
    with a known public second level. A wrong guess only moves a name into another domain's
    cap; `max_threads` still bounds the whole.
    """
    labels = host.lower().rstrip(".").split(".")
    keep = 2
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _PUBLIC_SECOND_LEVEL:
        keep = 3
    return ".".join(labels[-keep:])


@dataclass
class _Call:
    """One getaddrinfo call in flight, shared by every caller that wants the same name."""

    host: str
    port: int
    domain: str
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    addresses: list[str] = field(default_factory=list)
    error: Exception | None = None


class DnsResolver:
    """Resolves names with `lookup` (getaddrinfo by default) under the caps above; thread-safe."""

    def __init__(
        self,
        lookup: Resolver = system_resolver,
        *,
        max_threads: int = MAX_THREADS,
        per_domain: int = PER_DOMAIN,
        unanswered_memory_s: float = UNANSWERED_MEMORY_S,
        unanswered_after_s: float = UNANSWERED_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.max_threads = max_threads
        self.per_domain = per_domain
        self.unanswered_memory_s = unanswered_memory_s
        self.unanswered_after_s = unanswered_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, int], _Call] = {}
        self._per_domain: Counter[str] = Counter()
        self._unanswered: dict[str, float] = {}
        self._closed = False

    @property
    def threads(self) -> int:
        """Look-up threads running now (each call has exactly one)."""
        with self._lock:
            return len(self._calls)

    def close(self) -> None:
        """Start no more look-ups. Running ones cannot be stopped; their threads are daemons,
        so they never hold up the process's exit."""
        with self._lock:
            self._closed = True

    def resolve(self, host: str, port: int, timeout: float) -> list[str]:
        """The addresses of `host`, waiting at most `timeout` seconds.

        Raises ImageHostError when refused or out of time; the lookup's own errors (OSError for
        an unknown name) are raised as they are, for netguard.pick_address to translate.
        """
        call = self._call_for(host, port)
        if not call.done.wait(max(0.0, timeout)):
            self._remember_unanswered(call)
            raise ImageHostError(
                f"resolving image host {host!r} timed out after {timeout:.1f} s",
                code=TIMEOUT_CODE,
            )
        if call.error is not None:
            # A copy per caller: one exception object raised in several threads would share
            # (and garble) its traceback.
            raise copy.copy(call.error).with_traceback(None)
        return list(call.addresses)

    def _call_for(self, host: str, port: int) -> _Call:
        """Join the call in flight for this name, or start one if the caps allow."""
        with self._lock:
            self._check_open_and_answered(host)
            call = self._calls.get((host, port))
            if call is not None:
                return call
            call = _Call(host, port, domain_of(host), self._clock())
            self._check_room(call.domain)
            self._calls[(host, port)] = call
            self._per_domain[call.domain] += 1
        thread = threading.Thread(target=self._run, args=(call,), name=f"dns {host}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # the OS refused another thread
            call.error = OSError(f"cannot start a look-up of {host!r}")  # for callers who joined
            self._finish(call)
            raise ImageHostError(
                f"cannot start a look-up of image host {host!r}", code=TIMEOUT_CODE
            ) from exc
        return call

    def _check_open_and_answered(self, host: str) -> None:
        if self._closed:
            raise ImageHostError("the gateway is shutting down: no more host name look-ups")
        since = self._unanswered.get(host)
        if since is None:
            return
        ago = self._clock() - since
        if ago >= self.unanswered_memory_s:
            del self._unanswered[host]
            return
        raise ImageHostError(
            f"the name servers of image host {host!r} did not answer {ago:.1f} s ago; "
            f"not asking again for {self.unanswered_memory_s - ago:.1f} s",
            code=TIMEOUT_CODE,
        )

    def _check_room(self, domain: str) -> None:
        if self._per_domain[domain] >= self.per_domain:
            raise ImageHostError(
                f"{self._per_domain[domain]} look-ups of names under {domain!r} are already "
                "waiting on its name servers; refused without asking",
                code=TIMEOUT_CODE,
            )
        if len(self._calls) >= self.max_threads:
            raise ImageHostError(
                f"{len(self._calls)} host name look-ups are already waiting on slow name "
                "servers; refused without asking",
                code=TIMEOUT_CODE,
            )

    def _run(self, call: _Call) -> None:
        try:
            call.addresses = self.lookup(call.host, call.port)
        except Exception as exc:  # handed to every caller; a thread must not die loudly
            call.error = exc
        finally:
            self._finish(call)

    def _finish(self, call: _Call) -> None:
        with self._lock:
            del self._calls[(call.host, call.port)]
            self._per_domain[call.domain] -= 1
            if self._per_domain[call.domain] <= 0:
                del self._per_domain[call.domain]
            if call.error is None:
                self._unanswered.pop(call.host, None)  # answered after all: ask again freely
        call.done.set()

    def _remember_unanswered(self, call: _Call) -> None:
        now = self._clock()
        with self._lock:
            if call.done.is_set() and call.error is None:
                return  # the answer came just as the caller gave up
            if now - call.started < self.unanswered_after_s:
                return  # not unanswered for long enough to say the name servers are down
            horizon = now - self.unanswered_memory_s
            for host in [h for h, since in self._unanswered.items() if since <= horizon]:
                del self._unanswered[host]
            self._unanswered[call.host] = now
