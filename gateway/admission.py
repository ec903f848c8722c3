"""Admission by time, fair between clients: model capacity is for the model.

At most `capacity` images are in prediction at once (about what the model server batches well).
Only the Predict call holds capacity: a request resolves its version and fetches its images
first, then asks (AdmittedPredictor). The rest wait here, in fair order between clients
(start-time fair queuing: each client's requests in its own order, clients interleaved by the
images they have had let in, so one client's flood does not put everyone else behind it).
A request is refused (503 with Retry-After) when the estimated time to answer it, from the images
queued ahead of it and the recent service rate, exceeds the budget or what is left of its
deadline (checked before it fetches anything too), or when it has waited that long. When the
queue is full, the client with the most images queued loses its newest request (429), or the
newcomer is refused if it is that client. A waiting request whose client hung up leaves the queue
without reaching the model server.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.client import VersionMetadata
from gateway.deadline import Deadline
from gateway.errors import GatewayError, Overloaded, TooManyRequests
from gateway.interface import ModelInfo, Predictor, PredictRequest, PredictResult, Readiness
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Weight of the newest sample in the service-rate and service-time averages: about the last
# twenty completions count, so the estimate follows a change of load within a second or two.
EWMA_ALPHA = 0.05
# How often a waiting request checks whether its client hung up (its budget and deadline it
# waits for exactly). A hang-up costs only its place in the queue meanwhile: a request let in
# checks again before it uses its slot. Every 0.1 s was ~700 wake-ups a second with 68 waiters
# at 100 clients, each taking the GIL from the busy threads (docs/performance.md).
POLL_S = 0.5


class Refused(Overloaded):
    """Not admitted: the answer could not come within the budget. Retry-After is our estimate."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def retry_after_header(self, default_s: int) -> str | None:
        return str(self.retry_after)  # the admission estimate, not the configured default


class OverShare(TooManyRequests):
    """Pushed out of (or refused by) a full queue: this client has the most images waiting."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def retry_after_header(self, default_s: int) -> str | None:
        return str(self.retry_after)


class ClientGone(GatewayError):
    """The client closed its connection while its request waited; nobody reads this answer."""

    status = 499  # nginx's "client closed request": keeps these apart from errors in metrics
    code = "client_closed_request"


@dataclass
class _Waiter:
    cost: int
    client: str
    start: float  # virtual start time: the queue is in (start, seq) order
    seq: int
    woken: threading.Event = field(default_factory=threading.Event)
    began: tuple[float, float] = (0.0, 0.0)  # (time, busy-area) when let in
    refusal: GatewayError | None = None  # set when pushed out instead of let in

    @property
    def key(self) -> tuple[float, int]:
        return (self.start, self.seq)


class AdmissionControl:
    """The fair queue and the estimator. Costs are images; a batch of n costs n."""

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
        self._queue: list[_Waiter] = []  # sorted by key: the head is let in next
        self._queued = 0  # images waiting
        self._queued_by: dict[str, int] = {}  # images waiting, per client
        self._finish: dict[str, float] = {}  # virtual time a waiting client's next request starts
        self._vtime = 0.0  # start tag of the request let in last
        self._seq = 0
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

    def estimate(self, cost: int, client: str | None = None) -> float:
        """Seconds until a request of `cost` images from `client` arriving now would be answered;
        no client: behind every image queued (a client with less queued is let in sooner)."""
        with self._lock:
            return self._estimate(min(cost, self.capacity), client)

    def check(self, cost: int, client: str = "", deadline: Deadline | None = None) -> None:
        """Refuse now (before any image is fetched) a request the estimate says cannot be
        answered in time; let it go on otherwise (it is judged again when it asks to enter)."""
        cost = max(1, min(cost, self.capacity))
        with self._lock:
            if not self._queue and self._busy + cost <= self.capacity:
                return
            self._judge(cost, client, deadline)

    @contextmanager
    def admitted(
        self,
        cost: int,
        client_gone: Callable[[], bool],
        client: str = "",
        deadline: Deadline | None = None,
    ) -> Iterator[None]:
        """Hold `cost` images of capacity for the block, waiting in line if need be."""
        cost = max(1, min(cost, self.capacity))  # a batch larger than capacity runs alone
        began, waited = self._enter(cost, client, client_gone, deadline)
        if self.metrics is not None:
            self.metrics.queue_wait.observe(waited)
            self.metrics.admitted.inc()
        try:
            yield
        finally:
            self._leave(cost, began)

    def _enter(
        self,
        cost: int,
        client: str,
        client_gone: Callable[[], bool],
        deadline: Deadline | None,
    ) -> tuple[tuple[float, float], float]:
        """Let in at once or after waiting: ((time, busy-area) when let in, seconds waited)."""
        start = self.clock()
        if deadline is not None and deadline.at <= start:
            raise self._out_of_time(deadline)
        with self._lock:
            if not self._queue and self._busy + cost <= self.capacity:
                return self._take(cost), 0.0
            waiter = self._join(cost, client, deadline)
        self._wait(waiter, start + self.budget_s, deadline, client_gone)
        return waiter.began, waiter.began[0] - start

    def _join(self, cost: int, client: str, deadline: Deadline | None) -> _Waiter:
        """Queue in fair order, or refuse at once (caller holds the lock)."""
        self._make_room(cost, client)
        self._judge(cost, client, deadline)
        waiter = _Waiter(cost, client, self._start_tag(client), self._seq)
        self._seq += 1
        bisect.insort(self._queue, waiter, key=lambda w: w.key)
        self._queued += cost
        self._queued_by[client] = self._queued_by.get(client, 0) + cost
        self._finish[client] = waiter.start + cost
        return waiter

    def _judge(self, cost: int, client: str, deadline: Deadline | None) -> None:
        """Refuse when the estimate is over the budget or the time left (caller holds the lock)."""
        estimate = self._estimate(cost, client)
        limit, what = self.budget_s, f"the {self.budget_s:g} s budget"
        if deadline is not None and deadline.at - self.clock() < limit:
            limit = deadline.at - self.clock()
            what = f"the {max(0.0, limit):.1f} s left of the request's deadline"
        if estimate > limit:
            raise self._refuse(
                f"estimated {estimate:.1f} s to answer, over {what}", estimate - limit, "estimate"
            )

    def _make_room(self, cost: int, client: str) -> None:
        """With the queue full, push out the newest request of the client with the most images
        queued, or refuse the newcomer if it would be that client (caller holds the lock)."""
        while self._queued + cost > self.max_queue:
            mine = self._queued_by.get(client, 0) + cost
            top = max(self._queued_by, key=self._queued_by.__getitem__, default=None)
            if top is None or top == client or self._queued_by[top] <= mine:
                raise self._refuse_newcomer(client, cost)
            victim = max((w for w in self._queue if w.client == top), key=lambda w: w.key)
            self._remove(victim)
            victim.refusal = self._over_share(
                f"the queue is full and this client has the most images waiting "
                f"({self._queued_by.get(top, 0) + victim.cost})",
                victim.cost,
            )
            victim.woken.set()

    def _refuse_newcomer(self, client: str, cost: int) -> GatewayError:
        # Room comes as the images at the head of the queue go in, at the service rate.
        excess = self._queued + cost - self.max_queue
        later = excess / self._rate if self._rate else 1.0
        if self._queued_by.get(client, 0) and len(self._queued_by) > 1:
            return self._over_share(
                f"the queue is full and this client has the most images waiting "
                f"({self._queued_by[client]})",
                excess,
            )
        return self._refuse(f"the queue holds {self._queued} images already", later, "queue_full")

    def _wait(
        self,
        waiter: _Waiter,
        budget_end: float,
        deadline: Deadline | None,
        client_gone: Callable[[], bool],
    ) -> None:
        end = budget_end if deadline is None else min(budget_end, deadline.at)
        while not waiter.woken.wait(min(POLL_S, max(0.0, end - self.clock()))):
            gone = client_gone()
            if not gone and self.clock() < end:
                continue
            with self._lock:
                if waiter.woken.is_set():
                    break  # let in or pushed out meanwhile: handled below
                self._remove(waiter)
                self._grant()  # a big request leaving the head may let smaller ones in
                if gone:
                    raise self._gone()
                if deadline is not None and deadline.at < budget_end:
                    raise self._out_of_time(deadline)
                later = self._estimate(waiter.cost, waiter.client) - self.budget_s
                raise self._refuse("waited the whole budget in the queue", later, "waited")
        if waiter.refusal is not None:
            raise waiter.refusal
        if client_gone():
            self._leave_unused(waiter.cost)
            raise self._gone()

    def _start_tag(self, client: str) -> float:
        """Where `client`'s next request goes in the fair order: after its own waiting ones,
        and no earlier than the request let in last (an idle client gets no credit)."""
        return max(self._vtime, self._finish.get(client, self._vtime))

    def _remove(self, waiter: _Waiter) -> None:
        self._queue.remove(waiter)
        self._dequeued(waiter)

    def _dequeued(self, waiter: _Waiter) -> None:
        self._queued -= waiter.cost
        left = self._queued_by.get(waiter.client, 0) - waiter.cost
        if left > 0:
            self._queued_by[waiter.client] = left
        else:
            self._queued_by.pop(waiter.client, None)
            self._finish.pop(waiter.client, None)

    def _take(self, cost: int) -> tuple[float, float]:
        """Hold capacity; returns (time, busy-area) at that moment (caller holds the lock)."""
        self._advance_area()
        self._busy += cost
        self._requests_busy += 1
        return self._area_at, self._area

    def _grant(self) -> None:
        """Let in the head of the fair order while it fits; nobody overtakes a head that does
        not fit yet, so a big batch is not starved (caller holds the lock)."""
        while self._queue and self._busy + self._queue[0].cost <= self.capacity:
            waiter = self._queue.pop(0)
            self._dequeued(waiter)
            self._vtime = waiter.start
            waiter.began = self._take(waiter.cost)
            waiter.woken.set()

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

    def _estimate(self, cost: int, client: str | None) -> float:
        """Wait for the images ahead (in the fair order) to make room at the recent rate, plus
        one service time. Before the first answer there is no rate: only the bounds apply."""
        if self._rate is None or self._service_s is None:
            return 0.0
        before = self._queued
        if client is not None:
            tag = self._start_tag(client)
            before = sum(w.cost for w in self._queue if w.start <= tag)
        ahead = max(0, self._busy + before + cost - self.capacity)
        return ahead / self._rate + self._service_s

    def _refuse(self, reason: str, seconds: float, why: str) -> Refused:
        """The refusal, with Retry-After: when, at the recent rate, it would be let in."""
        if self.metrics is not None:
            self.metrics.shed.inc()
            self.metrics.refused("admission", why)
        log.info("refused: %s", reason, extra={"retry_after_s": seconds})
        return Refused(f"overloaded: {reason}; retry later", max(1, math.ceil(seconds)))

    def _over_share(self, reason: str, images: int) -> OverShare:
        if self.metrics is not None:
            self.metrics.refused("admission", "over_share")
        seconds = images / self._rate if self._rate else 1.0
        log.info("refused: %s", reason, extra={"retry_after_s": seconds})
        return OverShare(f"too many requests: {reason}; retry later", max(1, math.ceil(seconds)))

    def _out_of_time(self, deadline: Deadline) -> GatewayError:
        if self.metrics is not None:
            self.metrics.deadline_misses.labels("queue").inc()
        return deadline.exceeded("queue")

    def _gone(self) -> ClientGone:
        if self.metrics is not None:
            self.metrics.abandoned.inc()
        return ClientGone("the client closed the connection while its request waited")


def _ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + EWMA_ALPHA * (sample - previous)


@runtime_checkable
class StagedPredictor(Protocol):
    """A Predictor that splits a prediction: `prepare` (version, image fetches: no capacity
    held) returns something with a `cost` (images to predict) that `infer` takes."""

    def prepare(self, request: PredictRequest) -> Any: ...

    def infer(self, prepared: Any) -> PredictResult: ...


class AdmittedPredictor:
    """A Predictor whose predictions pass admission; everything else goes straight through.

    With a StagedPredictor only the Predict call holds capacity: a request is judged before it
    fetches (refused at once if it cannot be answered in time), fetches, then waits its turn.
    Another Predictor (test fakes) holds capacity for its whole predict.
    `client_gone` is asked while a request waits (the app reads waitress's disconnect flag).
    """

    def __init__(
        self, inner: Predictor, control: AdmissionControl, client_gone: Callable[[], bool]
    ) -> None:
        self.inner = inner
        self.control = control
        self.client_gone = client_gone

    def predict(self, request: PredictRequest) -> PredictResult:
        client, deadline = request.client, request.deadline
        if not isinstance(self.inner, StagedPredictor):
            with self.control.admitted(len(request.images), self.client_gone, client, deadline):
                return self.inner.predict(request)
        self.control.check(len(request.images), client, deadline)
        prepared = self.inner.prepare(request)
        if not prepared.cost:  # every image failed: nothing for the model
            return self.inner.infer(prepared)
        with self.control.admitted(prepared.cost, self.client_gone, client, deadline):
            return self.inner.infer(prepared)

    def list_models(self, request_id: str = "") -> list[ModelInfo]:
        return self.inner.list_models(request_id)

    def describe(self, model: str, request_id: str = "") -> ModelInfo:
        return self.inner.describe(model, request_id)

    def version_metadata(self, request: PredictRequest) -> VersionMetadata:
        return self.inner.version_metadata(request)

    def readiness(self) -> Readiness:
        return self.inner.readiness()

    def known_models(self) -> set[str]:
        return self.inner.known_models()

    def close(self) -> None:
        self.inner.close()
