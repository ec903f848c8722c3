"""Admission by time: the queue's rules on their own (a manual clock), then the real stack.

In the stack tests a gateway process talks to the local model server; images come from the
loopback image host through routes that hold their answer until the test lets go (a request
fetching one occupies its admission slot), or that answer after a fixed delay (a slow service
the estimator can measure). Nothing here waits on a timer: every wait is a poll of /metrics.
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
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from gateway.admission import AdmissionControl, ClientGone, Refused
from gateway.metrics import Metrics
from tests.gateway.conftest import GatewayProcess, Stack, start_gateway
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


# --- the real stack ---------------------------------------------------------------------------


def held_route(server: ImageServer, path: str, gate: threading.Event) -> str:
    """A JPEG the host sends only once `gate` is set: a request fetching it keeps its slot."""

    def route(h: BaseHTTPRequestHandler) -> None:
        gate.wait(30)
        send_jpeg(h)

    server.routes[path] = route
    return server.base + path


def slow_route(server: ImageServer, path: str, delay_s: float) -> str:
    """A JPEG sent after `delay_s`: a service time long enough to measure on a busy machine."""

    def route(h: BaseHTTPRequestHandler) -> None:
        threading.Event().wait(delay_s)
        send_jpeg(h)

    server.routes[path] = route
    return server.base + path


def send_jpeg(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Content-Length", str(len(JPEG)))
    h.end_headers()
    h.wfile.write(JPEG)


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


@pytest.fixture
def small_gateway(model_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """start(**env) starts a gateway with these DYNOSERVE_* settings; stopped after the test."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        # Held images may be held longer than the default fetch timeouts on a busy machine.
        slow_fetch = {"fetch_read_timeout_s": "25", "fetch_total_timeout_s": "28"}
        extra = {f"DYNOSERVE_{k.upper()}": v for k, v in (slow_fetch | env).items()}
        gw = start_gateway(model_stack, request.node.name, **extra)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.process.stop()


@pytest.mark.slow
def test_three_times_the_capacity_all_answered(
    small_gateway: Any, image_server: ImageServer
) -> None:
    gw = small_gateway(max_in_flight="2")
    gate = threading.Event()
    url = held_route(image_server, "/admission/held-1.jpg", gate)
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
    gw = small_gateway(max_in_flight="1", admission_budget_s=str(budget))
    slow = slow_route(image_server, "/admission/slow.jpg", 1.0)
    for _ in range(2):  # measured: about 1 image/s, 1 s each
        assert http_json(gw.base + "/v1/models/shapes:predict", {"image_url": slow})[0] == 200
    gate = threading.Event()
    held = held_route(image_server, "/admission/held-2.jpg", gate)
    post = {"image_url": held}
    legacy = {"model": "shapes", "image_url": held}
    running = [in_thread(lambda: http_json(gw.base + "/v1/models/shapes:predict", post))]
    try:
        until(gw, "dynoserve_gateway_in_flight_requests", 1)
        # Nothing completes while the held request keeps the only slot, so the estimate the
        # gateway publishes is exactly what the next request will be judged by.
        estimate = metric(gw, "dynoserve_gateway_admission_estimate_seconds")
        while estimate <= budget and len(running) < 20:
            running.append(in_thread(lambda: http_json(gw.base + "/predict", legacy)))
            until(gw, "dynoserve_gateway_queue_length", len(running) - 1)
            estimate = metric(gw, "dynoserve_gateway_admission_estimate_seconds")
        assert len(running) >= 3, "queued requests must come before any refusal"
        start = time.monotonic()
        status, headers, body = http_json(gw.base + "/v1/models/shapes:predict", post)
        refused_in = time.monotonic() - start
    finally:
        gate.set()
    assert (status, body["error"]["code"]) == (503, "overloaded"), body
    assert headers["Retry-After"] == str(max(1, math.ceil(estimate - budget)))
    assert refused_in < 1.0
    for thread, out in running:
        thread.join(30)
        assert out, "no answer"
        assert out[0][0] == 200, out
    assert metric(gw, "dynoserve_gateway_shed_requests_total") == 1


@pytest.mark.slow
def test_a_client_gone_while_waiting_never_reaches_the_model(
    small_gateway: Any, image_server: ImageServer
) -> None:
    gw = small_gateway(max_in_flight="1")
    gate = threading.Event()
    held = held_route(image_server, "/admission/held-3.jpg", gate)
    never = image_server.add_bytes("/admission/never.jpg", JPEG, {"Content-Type": "image/jpeg"})
    first = in_thread(lambda: http_json(gw.base + "/v1/models/shapes:predict", {"image_url": held}))
    try:
        until(gw, "dynoserve_gateway_in_flight_requests", 1)
        with socket.create_connection(("127.0.0.1", int(gw.base.rsplit(":", 1)[1])), 5) as sock:
            sock.sendall(raw_post("/v1/models/shapes:predict", f'{{"image_url": "{never}"}}'))
            until(gw, "dynoserve_gateway_queue_length", 1)
        until(gw, "dynoserve_gateway_abandoned_requests_total", 1)
        assert metric(gw, "dynoserve_gateway_queue_length") == 0
    finally:
        gate.set()
    first[0].join(30)
    assert first[1][0][0] == 200
    assert not [path for path, _ in image_server.hits if path == "/admission/never.jpg"]
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
    gw = small_gateway(max_in_flight="1", max_queue="2")
    gate = threading.Event()
    post = {"image_url": held_route(image_server, "/admission/held-4.jpg", gate)}

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
