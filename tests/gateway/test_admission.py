"""Admission by time: the queue's rules on their own (a manual clock), then a gateway process.

In the stack tests a gateway process fetches images from the loopback image host and talks to a
fake of TF Serving's gRPC services (grpcfake.py) whose Predict the test holds until it lets go
(only Predict occupies an admission slot) or slows by a fixed delay (a service time the estimator
can measure). Nothing here waits on a timer: every wait is a poll of /metrics.
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from typing import Any

import pytest

from gateway.admission import AdmissionControl, ClientGone, OverShare, Refused
from gateway.deadline import Deadline
from gateway.errors import DeadlineExceeded
from gateway.metrics import Metrics
from tests.gateway.conftest import MODELS_CONFIG, GatewayProcess, Stack, start_gateway
from tests.gateway.grpcfake import FakeGrpcModelServer, serve_fake
from tests.imagehost import ImageServer, image_bytes
from tests.support import http_json, wait_for

JPEG = image_bytes("JPEG", size=(64, 48), color="blue")


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a thread; its result or exception lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:  # handed to the test, which asserts on it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def hold(control: AdmissionControl, cost: int, stack: ExitStack) -> None:
    stack.enter_context(control.admitted(cost, lambda: False))


def wait_in_line(
    control: AdmissionControl, cost: int, release: threading.Event, order: list[int], tag: int
) -> tuple[threading.Thread, list[Any]]:
    """A request of `cost` that, once admitted, notes `tag` and holds on until `release`."""

    def body() -> int:
        with control.admitted(cost, lambda: False):
            order.append(tag)
            release.wait(10)
        return tag

    return in_thread(body)


def queued(control: AdmissionControl, n: int) -> None:
    wait_for(lambda: len(control._queue) == n, timeout=5, what=f"{n} waiting")


def measured(control: AdmissionControl, clock: ManualClock, service_s: float) -> None:
    """One request alone for `service_s`: rate 1/service_s images/s, service time service_s."""
    with control.admitted(1, lambda: False):
        clock.now += service_s


# --- the rules, with a manual clock -----------------------------------------------------------


def test_fifo_order_and_a_batch_counts_its_images() -> None:
    control = AdmissionControl(capacity=2, max_queue=10, budget_s=10)
    release, order = threading.Event(), list[int]()
    with ExitStack() as stack:
        hold(control, 2, stack)  # a batch of two fills the capacity
        first = wait_in_line(control, 1, release, order, 1)
        queued(control, 1)
        second = wait_in_line(control, 2, release, order, 2)
        queued(control, 2)
        third = wait_in_line(control, 1, release, order, 3)
        queued(control, 3)
    # One image of room after the batch left would fit `third`, but `second` is ahead of it.
    wait_for(lambda: order == [1], timeout=5, what="the head of the queue let in")
    assert len(control._queue) == 2
    release.set()
    for thread, out in (first, second, third):
        thread.join(10)
        assert isinstance(out[0], int), out
    assert order == [1, 2, 3]


def test_estimate_is_the_queue_ahead_at_the_measured_rate() -> None:
    clock = ManualClock()
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=4.5, clock=clock)
    assert control.estimate(1) == 0.0  # nothing measured yet: only the queue bound applies
    measured(control, clock, 2.0)  # 0.5 images/s, 2 s each
    assert control.estimate(1) == pytest.approx(2.0)
    release, order = threading.Event(), list[int]()
    with ExitStack() as stack:
        hold(control, 1, stack)
        assert control.estimate(1) == pytest.approx(4.0)  # one image ahead at 0.5/s, then 2 s
        waiting = wait_in_line(control, 1, release, order, 1)
        queued(control, 1)
        with pytest.raises(Refused) as refused:  # 6 s > 4.5 s
            hold(control, 1, stack)
        assert refused.value.retry_after == math.ceil(6.0 - 4.5)
        assert "over the 4.5 s budget" in refused.value.message
    release.set()
    waiting[0].join(10)
    assert waiting[1] == [1]


def test_queue_bound_refuses_even_without_an_estimate() -> None:
    control = AdmissionControl(capacity=2, max_queue=2, budget_s=10)
    release, order = threading.Event(), list[int]()
    with ExitStack() as stack:
        hold(control, 2, stack)
        waiting = wait_in_line(control, 2, release, order, 1)
        queued(control, 1)
        with pytest.raises(Refused, match="queue holds 2 images") as refused:
            hold(control, 1, stack)
        assert refused.value.retry_after == 1
    release.set()
    waiting[0].join(10)


def test_a_waiting_request_gives_up_after_the_budget() -> None:
    clock = ManualClock()
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=3, clock=clock)
    with ExitStack() as stack:
        hold(control, 1, stack)
        waiting = in_thread(lambda: hold(control, 1, ExitStack()))
        queued(control, 1)
        clock.now += 3.5
        waiting[0].join(10)
        assert isinstance(waiting[1][0], Refused)
        assert len(control._queue) == 0


def test_a_client_that_hangs_up_leaves_the_queue() -> None:
    metrics = Metrics()
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=10, metrics=metrics)
    gone = threading.Event()
    with ExitStack() as stack:
        hold(control, 1, stack)
        waiting = in_thread(lambda: stack.enter_context(control.admitted(1, gone.is_set)))
        queued(control, 1)
        gone.set()
        waiting[0].join(10)
        assert isinstance(waiting[1][0], ClientGone)
        assert len(control._queue) == 0
    assert metrics.registry.get_sample_value("dynoserve_gateway_abandoned_requests_total") == 1
    assert metrics.registry.get_sample_value("dynoserve_gateway_admitted_requests_total") == 1
    assert metrics.registry.get_sample_value("dynoserve_gateway_in_flight_requests") == 0


# --- fair between clients ---------------------------------------------------------------------


def client_in_line(
    control: AdmissionControl, client: str, release: threading.Event, order: list[str], tag: str
) -> tuple[threading.Thread, list[Any]]:
    def body() -> str:
        with control.admitted(1, lambda: False, client):
            order.append(tag)
            release.wait(10)
        return tag

    return in_thread(body)


def test_a_newcomer_is_not_queued_behind_a_flooding_client() -> None:
    """Start-time fair queuing: client b's one request goes in after a's first, not its last;
    each client's own requests keep their order."""
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=10)
    order: list[str] = []
    release = threading.Event()
    waiting = []
    with ExitStack() as stack:
        stack.enter_context(control.admitted(1, lambda: False, "a"))
        for n in range(4):
            waiting.append(client_in_line(control, "a", release, order, f"a{n}"))
            queued(control, n + 1)
        waiting.append(client_in_line(control, "b", release, order, "b0"))
        queued(control, 5)
    release.set()
    for thread, _ in waiting:
        thread.join(10)
    assert order == ["a0", "b0", "a1", "a2", "a3"]


def test_the_estimate_is_per_client() -> None:
    clock = ManualClock()
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=100, clock=clock)
    measured(control, clock, 1.0)  # 1 image/s, 1 s each
    release = threading.Event()
    waiting = []
    with ExitStack() as stack:
        hold(control, 1, stack)
        for n in range(3):
            waiting.append(in_thread(partial(client_waits, control, "a", release)))
            queued(control, n + 1)
        assert control.estimate(1, "a") == pytest.approx(5.0)  # the slot, then its own 3
        assert control.estimate(1, "b") == pytest.approx(3.0)  # the slot and a's first only
        assert control.estimate(1) == pytest.approx(5.0)  # the gauge: behind everything
    release.set()
    for thread, _ in waiting:
        thread.join(10)


def client_waits(control: AdmissionControl, client: str, release: threading.Event) -> None:
    with control.admitted(1, lambda: False, client):
        release.wait(10)


def test_a_full_queue_pushes_out_the_biggest_client() -> None:
    """The queue holds 3, all client a's: b's request takes the place of a's newest (429 for
    it); a's next is refused at once, as a holds the most."""
    metrics = Metrics()
    control = AdmissionControl(capacity=1, max_queue=3, budget_s=10, metrics=metrics)
    release = threading.Event()
    with ExitStack() as stack:
        hold(control, 1, stack)
        flood = []
        for n in range(3):
            flood.append(in_thread(partial(client_waits, control, "a", release)))
            queued(control, n + 1)
        newcomer = in_thread(partial(client_waits, control, "b", release))
        wait_for(lambda: any(out for _, out in flood), timeout=5, what="a pushed out")
        queued(control, 3)
        with pytest.raises(OverShare) as again:
            stack.enter_context(control.admitted(1, lambda: False, "a"))
        assert again.value.status == 429
    release.set()
    for thread, _ in [*flood, newcomer]:
        thread.join(10)
    pushed = [out[0] for _, out in flood if isinstance(out[0], OverShare)]
    assert len(pushed) == 1
    assert pushed[0].code == "client_over_share"
    assert newcomer[1] == [None]
    over_share = {"pool": "admission", "reason": "over_share"}
    assert metrics.registry.get_sample_value("dynoserve_gateway_refusals_total", over_share) == 2


def test_the_request_deadline_ends_the_wait_with_stage_queue() -> None:
    clock = ManualClock()
    metrics = Metrics()
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=10, metrics=metrics, clock=clock)
    deadline = Deadline.after(2.0, clock)
    with ExitStack() as stack:
        hold(control, 1, stack)
        waiting = in_thread(
            lambda: stack.enter_context(control.admitted(1, lambda: False, "a", deadline))
        )
        queued(control, 1)
        clock.now += 2.5  # past the request's deadline, well inside the 10 s budget
        waiting[0].join(10)
    error = waiting[1][0]
    assert isinstance(error, DeadlineExceeded)
    assert error.to_json()["error"]["stage"] == "queue"
    assert (
        metrics.registry.get_sample_value(
            "dynoserve_gateway_deadline_misses_total", {"stage": "queue"}
        )
        == 1
    )


def test_refused_up_front_when_the_deadline_leaves_too_little() -> None:
    """check() judges a request before it fetches: the estimate against what is left."""
    clock = ManualClock()
    control = AdmissionControl(capacity=1, max_queue=10, budget_s=10, clock=clock)
    measured(control, clock, 2.0)
    with ExitStack() as stack:
        hold(control, 1, stack)
        control.check(1, "a", Deadline.after(5.0, clock))  # 4 s to answer: fine
        with pytest.raises(Refused, match="left of the request's deadline"):
            control.check(1, "a", Deadline.after(3.0, clock))


# --- the real stack ---------------------------------------------------------------------------


def jpeg_url(server: ImageServer) -> str:
    return server.add_bytes("/admission/blue.jpg", JPEG, {"Content-Type": "image/jpeg"})


def metric(gw: GatewayProcess, name: str) -> float:
    """One unlabelled sample (or the sum of a labelled family) from /metrics."""
    with urllib.request.urlopen(gw.base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    values = [float(v) for v in pattern.findall(text)]
    assert values, f"{name} not in /metrics"
    return sum(values)


def until(gw: GatewayProcess, name: str, value: float) -> None:
    wait_for(lambda: metric(gw, name) == value, timeout=20, what=f"{name} == {value}")


@pytest.fixture(scope="module")
def held_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FakeGrpcModelServer, Stack]]:
    """A fake model server (grpcfake.py) whose Predict the test holds or slows: only Predict
    holds an admission slot, and the real model cannot be told to take its time."""
    base = tmp_path_factory.mktemp("held-model")
    config = base / "models.config"
    config.write_text(MODELS_CONFIG.format(base=base))
    with serve_fake(FakeGrpcModelServer(), workers=32) as (fake, target):
        yield fake, Stack(target, config, base)


@pytest.fixture
def small_gateway(
    held_model: tuple[FakeGrpcModelServer, Stack], request: pytest.FixtureRequest
) -> Iterator[Any]:
    """start(**env) starts a gateway with these DYNOSERVE_* settings and returns it with the
    model's gate, shut at first; stopped (and the gate opened) after the test."""
    fake, stack = held_model
    started: list[GatewayProcess] = []
    gate = threading.Event()
    fake.predict_gate, fake.predict_delay = gate, 0.0
    fake.predicted.clear()

    def start(**env: str) -> tuple[GatewayProcess, FakeGrpcModelServer, threading.Event]:
        # The same image again and again must reach the model: the answer cache off.
        extra = {"DYNOSERVE_ANSWER_CACHE_BYTES": "0"}
        extra.update({f"DYNOSERVE_{k.upper()}": v for k, v in env.items()})
        gw = start_gateway(stack, request.node.name, **extra)
        started.append(gw)
        return gw, fake, gate

    yield start
    gate.set()
    for gw in started:
        gw.process.stop()


@pytest.mark.slow
def test_three_times_the_capacity_all_answered(
    small_gateway: Any, image_server: ImageServer
) -> None:
    gw, _, gate = small_gateway(max_in_flight="2")
    url = jpeg_url(image_server)
    calls = [
        ("/v1/models/shapes:predict", {"images": [{"image_url": url}, {"image_url": url}]}),
        ("/v1/models/shapes:predict", {"image_url": url}),
        (f"/v1/models/shapes:predict?image_url={url}", None),
        ("/predict", {"model": "shapes", "image_url": url}),
        ("/v1/models/shapes:predict", {"image_url": url}),
        ("/predict", {"model": "shapes", "image_url": url}),
    ]
    running: list[tuple[threading.Thread, list[Any]]] = []
    try:
        for n, (path, body) in enumerate(calls):
            running.append(in_thread(partial(http_json, gw.base + path, body)))
            if n == 0:  # the batch of two fills both slots: everything after it waits
                until(gw, "dynoserve_gateway_in_flight_requests", 1)
            else:
                until(gw, "dynoserve_gateway_queue_length", n)
        assert metric(gw, "dynoserve_gateway_in_flight_requests") == 1
    finally:
        gate.set()
    for thread, out in running:
        thread.join(30)
        assert out, "no answer"
        assert out[0][0] == 200, out
    assert len(running[0][1][0][2]["results"]) == 2
    assert metric(gw, "dynoserve_gateway_admitted_requests_total") == 6
    assert metric(gw, "dynoserve_gateway_queue_wait_seconds_count") == 6
    assert metric(gw, 'dynoserve_gateway_queue_wait_seconds_bucket{le="0.0"}') == 1  # the batch
    assert metric(gw, "dynoserve_gateway_shed_requests_total") == 0
    assert metric(gw, "dynoserve_gateway_queue_length") == 0
    assert metric(gw, "dynoserve_gateway_service_rate_images_per_second") > 0
    assert metric(gw, "dynoserve_gateway_admission_estimate_seconds") > 0


@pytest.mark.slow
def test_refused_only_past_the_budget_with_retry_after(
    small_gateway: Any, image_server: ImageServer
) -> None:
    budget = 6.0
    gw, model, gate = small_gateway(max_in_flight="1", admission_budget_s=str(budget))
    post = {"image_url": jpeg_url(image_server)}
    legacy = {"model": "shapes", "image_url": post["image_url"]}
    model.predict_gate, model.predict_delay = None, 1.0
    for _ in range(2):  # measured: about 1 image/s, 1 s each
        assert http_json(gw.base + "/v1/models/shapes:predict", post)[0] == 200
    model.predict_gate, model.predict_delay = gate, 0.0
    running = [in_thread(lambda: http_json(gw.base + "/v1/models/shapes:predict", post))]
    try:
        until(gw, "dynoserve_gateway_in_flight_requests", 1)
        # Nothing completes while the held request keeps the only slot, so the estimate the
        # gateway publishes is exactly what the next request (the same client) is judged by.
        estimate = metric(gw, "dynoserve_gateway_admission_estimate_seconds")
        while estimate <= budget and len(running) < 20:
            running.append(in_thread(lambda: http_json(gw.base + "/predict", legacy)))
            until(gw, "dynoserve_gateway_queue_length", len(running) - 1)
            estimate = metric(gw, "dynoserve_gateway_admission_estimate_seconds")
        assert len(running) >= 3, "queued requests must come before any refusal"
        fetched = len(image_server.hits)
        start = time.monotonic()
        status, headers, body = http_json(gw.base + "/v1/models/shapes:predict", post)
        refused_in = time.monotonic() - start
    finally:
        gate.set()
    assert (status, body["error"]["code"]) == (503, "overloaded"), body
    assert headers["Retry-After"] == str(max(1, math.ceil(estimate - budget)))
    assert refused_in < 1.0
    assert len(image_server.hits) == fetched  # refused before fetching its image
    for thread, out in running:
        thread.join(30)
        assert out, "no answer"
        assert out[0][0] == 200, out
    assert metric(gw, "dynoserve_gateway_shed_requests_total") == 1
    assert metric(gw, 'dynoserve_gateway_refusals_total{pool="admission",reason="estimate"}') == 1


@pytest.mark.slow
def test_a_client_gone_while_waiting_never_reaches_the_model(
    small_gateway: Any, image_server: ImageServer
) -> None:
    gw, model, gate = small_gateway(max_in_flight="1")
    url = jpeg_url(image_server)
    first = in_thread(lambda: http_json(gw.base + "/v1/models/shapes:predict", {"image_url": url}))
    try:
        until(gw, "dynoserve_gateway_in_flight_requests", 1)
        with socket.create_connection(("127.0.0.1", int(gw.base.rsplit(":", 1)[1])), 5) as sock:
            sock.sendall(raw_post("/v1/models/shapes:predict", f'{{"image_url": "{url}"}}'))
            until(gw, "dynoserve_gateway_queue_length", 1)
        until(gw, "dynoserve_gateway_abandoned_requests_total", 1)
        assert metric(gw, "dynoserve_gateway_queue_length") == 0
    finally:
        gate.set()
    first[0].join(30)
    assert first[1][0][0] == 200
    assert len(model.predicted) == 1
    assert metric(gw, "dynoserve_gateway_inference_duration_seconds_count") == 1
    assert metric(gw, "dynoserve_gateway_admitted_requests_total") == 1


def raw_post(path: str, body: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


@pytest.mark.slow
def test_refusals_do_not_wait_for_a_thread(small_gateway: Any, image_server: ImageServer) -> None:
    """Every waiting request holds a waitress thread; the pool has one for each plus headroom,
    so with the slot and the queue full, more clients are refused at once (with 3 threads this
    test times out: the refusals would wait for the held request)."""
    gw, _, gate = small_gateway(max_in_flight="1", max_queue="2")
    post = {"image_url": jpeg_url(image_server)}

    def call() -> tuple[int, Any, Any]:
        return http_json(gw.base + "/v1/models/shapes:predict", post)

    admitted = [in_thread(call) for _ in range(3)]
    try:
        until(gw, "dynoserve_gateway_queue_length", 2)
        refused = [in_thread(call) for _ in range(8)]
        for thread, _ in refused:
            thread.join(10)
        answers = [out[0] for _, out in refused if out]
    finally:
        gate.set()
    assert [(status, headers["Retry-After"]) for status, headers, _ in answers] == [(503, "1")] * 8
    for thread, out in admitted:
        thread.join(30)
        assert out[0][0] == 200, out
