"""Admission by time: a request waits in a FIFO queue unless it cannot be answered in its budget.

At most `capacity` images are in prediction at once (about what the model server batches well);
the rest wait here, first come first served. A request is refused (503 with Retry-After) only
when the estimated time to answer it, from the images queued ahead and the recent service rate,
exceeds the budget, when the queue bound is reached, or when it has waited the whole budget.
A waiting request whose client hung up leaves the queue without reaching the model server.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.errors import GatewayError, Overloaded
from gateway.metrics import Metrics
from gateway.results import ModelInfo, Predictor, PredictRequest, PredictResult, Readiness
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Weight of the newest sample in the service-rate and service-time averages: about the last
# twenty completions count, so the estimate follows a change of load within a second or two.
EWMA_ALPHA = 0.05
# How often a waiting request checks whether its client is still there (and its deadline).
POLL_S = 0.1


class Refused(Overloaded):
    """Not admitted: the answer could not come within the budget. Retry-After is our estimate."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def retry_after_header(self, default_s: int) -> str | None:
        return str(self.retry_after)  # the admission estimate, not the configured default


class ClientGone(GatewayError):
    """The client closed its connection while its request waited; nobody reads this answer."""

    status = 499  # nginx's "client closed request": keeps these apart from errors in metrics
    code = "client_closed_request"


@dataclass
class _Waiter:
    cost: int
    granted: threading.Event = field(default_factory=threading.Event)
    began: tuple[float, float] = (0.0, 0.0)  # (time, busy-area) when let in


class AdmissionControl:
    """The FIFO queue and the estimator. Costs are images; a batch of n costs n."""

    def __init__(
        self,
        capacity: int,
        max_queue: int,
        budget_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.budget_s = budget_s
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self._queued = 0  # images waiting
        self._busy = 0  # images in prediction
        self._requests_busy = 0
        self._rate: float | None = None  # images per second, while busy
        self._service_s: float | None = None  # seconds per request in prediction
        self._area = 0.0  # integral of _busy over time (Little's law: rate = mean busy / time)
        self._area_at = clock()
        if metrics is not None:
            metrics.in_flight.set_function(lambda: self._requests_busy)
            metrics.queue_length.set_function(lambda: len(self._queue))
            metrics.admission_estimate.set_function(lambda: self.estimate(1))
            metrics.service_rate.set_function(lambda: self._rate or 0.0)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> AdmissionControl:
        return cls(settings.max_in_flight, settings.max_queue, settings.admission_budget_s, metrics)

    def estimate(self, cost: int) -> float:
        """Seconds until a request of `cost` images arriving now would be answered."""
        with self._lock:
            return self._estimate(min(cost, self.capacity))

    @contextmanager
    def admitted(self, cost: int, client_gone: Callable[[], bool]) -> Iterator[None]:
        """Hold `cost` images of capacity for the block, waiting in line if need be."""
        cost = max(1, min(cost, self.capacity))  # a batch larger than capacity runs alone
        began, waited = self._enter(cost, client_gone)
        if self.metrics is not None:
            self.metrics.queue_wait.observe(waited)
            self.metrics.admitted.inc()
        try:
            yield
        finally:
            self._leave(cost, began)

    def _enter(
        self, cost: int, client_gone: Callable[[], bool]
    ) -> tuple[tuple[float, float], float]:
        """Let in at once or after waiting: ((time, busy-area) when let in, seconds waited)."""
        start = self.clock()
        with self._lock:
            if not self._queue and self._busy + cost <= self.capacity:
                return self._take(cost), 0.0
            waiter = self._join(cost)
        self._wait(waiter, start + self.budget_s, client_gone)
        return waiter.began, waiter.began[0] - start

    def _join(self, cost: int) -> _Waiter:
        """Queue behind the others, or refuse at once (caller holds the lock)."""
        if self._queued + cost > self.max_queue:
            # Room comes as the images at the head of the queue go in, at the service rate.
            excess = self._queued + cost - self.max_queue
            raise self._refuse(
                f"the queue holds {self._queued} images already",
                excess / self._rate if self._rate else 1.0,
            )
        estimate = self._estimate(cost)
        if estimate > self.budget_s:
            raise self._refuse(
                f"estimated {estimate:.1f} s to answer, over the {self.budget_s:g} s budget",
                estimate - self.budget_s,
            )
        waiter = _Waiter(cost)
        self._queue.append(waiter)
        self._queued += cost
        return waiter

    def _wait(self, waiter: _Waiter, deadline: float, client_gone: Callable[[], bool]) -> None:
        while not waiter.granted.wait(POLL_S):
            gone = client_gone()
            if not gone and self.clock() < deadline:
                continue
            with self._lock:
                if waiter.granted.is_set():
                    break  # granted meanwhile: it holds capacity now, handled below
                self._queue.remove(waiter)
                self._queued -= waiter.cost
                self._grant()  # a big request leaving the head may let smaller ones in
                if gone:
                    raise self._gone()
                later = self._estimate(waiter.cost) - self.budget_s
                raise self._refuse("waited the whole budget in the queue", later)
        if client_gone():
            self._leave_unused(waiter.cost)
            raise self._gone()

    def _take(self, cost: int) -> tuple[float, float]:
        """Hold capacity; returns (time, busy-area) at that moment (caller holds the lock)."""
        self._advance_area()
        self._busy += cost
        self._requests_busy += 1
        return self._area_at, self._area

    def _grant(self) -> None:
        """Let in the head of the queue while it fits: strict FIFO (caller holds the lock)."""
        while self._queue and self._busy + self._queue[0].cost <= self.capacity:
            waiter = self._queue.popleft()
            self._queued -= waiter.cost
            waiter.began = self._take(waiter.cost)
            waiter.granted.set()

    def _leave(self, cost: int, began: tuple[float, float]) -> None:
        with self._lock:
            self._advance_area()
            elapsed = self._area_at - began[0]
            if elapsed > 0:
                # Little's law over this request's time in prediction: images in prediction on
                # average, divided by how long each stayed, is the rate they went through.
                busy = (self._area - began[1]) / elapsed
                self._rate = _ewma(self._rate, busy / elapsed)
                self._service_s = _ewma(self._service_s, elapsed)
            self._release(cost)

    def _leave_unused(self, cost: int) -> None:
        with self._lock:
            self._advance_area()
            self._release(cost)

    def _release(self, cost: int) -> None:
        self._busy -= cost
        self._requests_busy -= 1
        self._grant()

    def _advance_area(self) -> None:
        now = self.clock()
        self._area += self._busy * (now - self._area_at)
        self._area_at = now

    def _estimate(self, cost: int) -> float:
        """Wait for the images ahead to make room at the recent rate, plus one service time.
        Before the first answer there is no rate: only the queue bound applies."""
        if self._rate is None or self._service_s is None:
            return 0.0
        ahead = max(0, self._busy + self._queued + cost - self.capacity)
        return ahead / self._rate + self._service_s

    def _refuse(self, reason: str, seconds: float) -> Refused:
        """The refusal, with Retry-After: when, at the recent rate, it would be let in."""
        if self.metrics is not None:
            self.metrics.shed.inc()
        log.info("refused: %s", reason, extra={"retry_after_s": seconds})
        return Refused(f"overloaded: {reason}; retry later", max(1, math.ceil(seconds)))

    def _gone(self) -> ClientGone:
        if self.metrics is not None:
            self.metrics.abandoned.inc()
        return ClientGone("the client closed the connection while its request waited")


def _ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + EWMA_ALPHA * (sample - previous)


class AdmittedPredictor:
    """A Predictor whose predictions pass admission first; everything else goes straight through.

    `client_gone` is asked while a request waits (the app reads waitress's disconnect flag).
    """

    def __init__(
        self, inner: Predictor, control: AdmissionControl, client_gone: Callable[[], bool]
    ) -> None:
        self.inner = inner
        self.control = control
        self.client_gone = client_gone

    def predict(self, request: PredictRequest) -> PredictResult:
        with self.control.admitted(len(request.images), self.client_gone):
            return self.inner.predict(request)

    def list_models(self, request_id: str = "") -> list[ModelInfo]:
        return self.inner.list_models(request_id)

    def describe(self, model: str, request_id: str = "") -> ModelInfo:
        return self.inner.describe(model, request_id)

    def readiness(self) -> Readiness:
        return self.inner.readiness()

    def known_models(self) -> set[str]:
        return self.inner.known_models()

    def close(self) -> None:
        self.inner.close()
