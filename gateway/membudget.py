"""The gateway's memory budget: bytes a request will hold (its body, the images decoded from it
or fetched for it, and their copies on the way to the model server) are reserved before they
are allocated, against one pool shared fairly between clients (fairness.FairShares).

A full pool answers 503 `memory_budget`, a client over its fair share 429 `client_over_share`,
both with Retry-After, before the body is read. What a body will cost follows from its
Content-Length and kind (the expansion factors below, from the copies the code makes); a
fetched image is charged as it streams in (`charge_fetched`). Everything is given back when the
request ends. No Flask here: app.py reserves per request and routes.py reads bodies.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NoReturn

from gateway.errors import GatewayError, PayloadTooLarge, ServiceUnavailable, TooManyRequests
from gateway.fairness import RESERVE, FairShares, Refusal

log = logging.getLogger("gateway.membudget")

MiB = 1024 * 1024
# A request waiting for a full budget looks again at least this often.
_RECHECK_S = 0.1
# Copies of an image's bytes on their way to the model server, besides the image the request
# keeps: the input tensor (client.string_tensor), the serialized request (written straight from
# the tensor's bytes: client.encode_predict_request) and gRPC's send buffer. All live during
# the Predict call.
PREDICT_COPIES = 3
# Per byte of a base64 JSON body, at its peak: while parsing, the body and its text (2); at
# Predict, the decoded image (3/4 of the body) and its copies. routes.read_json frees the body
# before parsing its text and each base64 string once it is decoded.
JSON_FACTOR = max(2.0, 0.75 * (1 + PREDICT_COPIES))
# A multipart upload: werkzeug spools the file part to disk, routes.py reads it once; then the
# image and its copies at Predict.
MULTIPART_FACTOR = 1.0 + PREDICT_COPIES
# A urlencoded form (image_url, options): the body and its parsed fields.
FORM_FACTOR = 2.0
# Any other body is never read (415), but waitress handed it over: count it once.
OTHER_FACTOR = 1.0
# A fetched image: read into a buffer, then the image and its copies at Predict.
FETCHED_FACTOR = 1 + PREDICT_COPIES
# A non-JPEG image is decoded whole to be vetted and prepared (images.py): the frame, up to 4
# bytes per pixel, and one converted copy of it (to RGB, or over a white background).
PIXEL_BYTES = 4 * 2

_FACTORS = {
    "application/json": JSON_FACTOR,
    "multipart/form-data": MULTIPART_FACTOR,
    "application/x-www-form-urlencoded": FORM_FACTOR,
}


class MemoryBudgetFull(ServiceUnavailable):
    """Requests in progress hold the whole memory budget (DYNOSERVE_MEMORY_BUDGET_BYTES)."""

    code = "memory_budget"


def body_cost(length: int, mimetype: str) -> int:
    """Bytes a request body of `length` bytes will hold in the gateway at its peak."""
    if length <= 0:
        return 0
    json_like = mimetype == "application/json" or mimetype.endswith("+json")
    factor = JSON_FACTOR if json_like else _FACTORS.get(mimetype, OTHER_FACTOR)
    return int(length * factor)


def largest_body_cost(max_request_bytes: int) -> int:
    """What the largest body the gateway accepts may cost, of any kind."""
    return int(max_request_bytes * max(JSON_FACTOR, *_FACTORS.values(), OTHER_FACTOR))


def _mib(amount: int) -> str:
    return f"{amount / MiB:.1f} MiB"


def refusal_error(refusal: Refusal, amount: int) -> GatewayError:
    """429 client_over_share when this client holds more than its share of a contended pool,
    else 503 memory_budget; both say Retry-After. (A client that holds nothing is over no share:
    FairShares refuses it only when the pool is full.)"""
    needs = f"this request needs {_mib(amount)}"
    if refusal.over_share:
        return TooManyRequests(
            f"this client holds {_mib(refusal.held)} of request memory and {needs} more, over "
            f"its fair share of {_mib(refusal.share)}; retry later"
        )
    held = f"{_mib(refusal.in_use)} of {_mib(refusal.capacity)} held"
    return MemoryBudgetFull(
        f"the gateway's memory budget is taken by requests in progress ({held}): {needs}; "
        "retry later"
    )


def _reason(error: GatewayError) -> str:
    """The refusal's label in dynoserve_gateway_refusals_total (fairness.Refusal.reason's)."""
    return "over_share" if isinstance(error, TooManyRequests) else "full"


class Reservation:
    """What one request holds of the budget; grows as fetched bytes arrive, released once."""

    def __init__(
        self,
        pool: FairShares,
        client: str,
        on_refusal: Callable[[str], None] | None = None,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.on_refusal = on_refusal
        self.on_release = on_release
        self.held = 0
        self._released = False

    def grow(self, amount: int) -> None:
        """Hold `amount` more bytes, or raise the refusal (nothing more held then)."""
        error = self.try_grow(amount)
        if error is not None:
            self.refuse(error)

    def try_grow(self, amount: int) -> GatewayError | None:
        """Hold `amount` more bytes, or say why not (nothing more held then)."""
        if amount <= 0:
            return None
        if self._released:
            raise RuntimeError("a released reservation cannot grow")
        refusal = self.pool.try_take(self.client, amount)
        if refusal is not None:
            return refusal_error(refusal, amount)
        self.held += amount
        return None

    def refuse(self, error: GatewayError) -> NoReturn:
        if self.on_refusal is not None:
            self.on_refusal(_reason(error))
        raise error

    def release(self) -> None:
        """Give everything back; safe to call more than once."""
        if not self._released:
            self._released = True
            held, self.held = self.held, 0
            if held:
                self.pool.give_back(self.client, held)
                if self.on_release is not None:
                    self.on_release()


class MemoryBudget:
    """The byte pool of one gateway process; thread-safe. `on_refusal` gets each refusal's
    reason (`full` or `over_share`), for the metrics."""

    def __init__(self, capacity: int, on_refusal: Callable[[str], None] | None = None) -> None:
        self.pool = FairShares("bytes", capacity)
        self.on_refusal = on_refusal
        self._freed = threading.Condition()

    @property
    def capacity(self) -> int:
        return self.pool.capacity

    @property
    def in_use(self) -> int:
        return self.pool.in_use

    def reserve(
        self,
        client: str,
        amount: int,
        wait_s: float = 0.0,
        gone: Callable[[], bool] | None = None,
    ) -> Reservation:
        """A reservation of `amount` bytes for `client`, or the 503/429 refusal raised. A full
        budget is waited for up to `wait_s` (the body is in waitress's temp file meanwhile, not
        in memory) unless `gone` says the client left; a client over its share is refused at
        once, so a flooder cannot park its requests on the server's threads."""
        reservation = Reservation(self.pool, client, self.on_refusal, self._notify)
        give_up = time.monotonic() + wait_s
        while (error := reservation.try_grow(amount)) is not None:
            left = give_up - time.monotonic()
            if left <= 0 or isinstance(error, TooManyRequests) or (gone and gone()):
                reservation.refuse(error)
            with self._freed:
                # Short waits: a release between try_grow and here notified nobody.
                self._freed.wait(min(left, _RECHECK_S))
        return reservation

    def _notify(self) -> None:
        with self._freed:
            self._freed.notify_all()


# The reservation of the request this thread (or a copy of its context) is serving.
_current: ContextVar[Reservation | None] = ContextVar("dynoserve_memory", default=None)


@contextmanager
def for_request(reservation: Reservation) -> Iterator[Reservation]:
    """Make `reservation` the current request's for the block, then release it."""
    token = _current.set(reservation)
    try:
        yield reservation
    finally:
        _current.reset(token)
        reservation.release()


def charge_fetched(nbytes: int) -> None:
    """Count `nbytes` more of an image being fetched for the current request (and the copies
    it will need), or raise 503 memory_budget / 429 client_over_share. Outside a request
    (tests of the fetcher alone) nothing is counted."""
    reservation = _current.get()
    if reservation is not None:
        reservation.grow(nbytes * FETCHED_FACTOR)


def charge_more(nbytes: int) -> None:
    """Count `nbytes` the current request holds beyond what its body's kind was charged (a
    /v2 body's tensors: gateway/v2), or raise 503 memory_budget / 429 client_over_share.
    Outside a request nothing is counted."""
    reservation = _current.get()
    if reservation is not None and nbytes > 0:
        reservation.grow(nbytes)


def charge_pixels(width: int, height: int) -> None:
    """Count the pixels of an image about to be decoded whole against the current request; an
    image whose pixels alone exceed what one client may ever hold is 413, not a retry."""
    reservation = _current.get()
    if reservation is None:
        return
    amount = width * height * PIXEL_BYTES
    most = int(reservation.pool.capacity * (1 - RESERVE))
    if amount > most:
        raise PayloadTooLarge(
            f"decoding this {width}x{height} image takes {_mib(amount)}, more than one client "
            f"may hold ({_mib(most)} of DYNOSERVE_MEMORY_BUDGET_BYTES)"
        )
    reservation.grow(amount)


# glibc mallopt parameters (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations from this size up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 128 * 1024


def tune_malloc() -> bool:
    """Keep large buffers (bodies, images) out of malloc's heaps: with its default dynamic
    threshold, glibc raises the mmap threshold to the size of the largest block freed (up to
    32 MiB), so after the first request every 6 MB body lands in one of the up to 8 x CPUs
    arenas the gateway's hundreds of threads spread over, where freed memory mostly stays.
    Fixing the thresholds turns that off. False where there is no glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD) == 1 and ok
    if not ok:
        log.warning("mallopt refused the mmap/trim thresholds; large frees may stay in RSS")
    return ok
