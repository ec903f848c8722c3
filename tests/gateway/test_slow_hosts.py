"""Image hosts far away, slow on purpose, or flooded by one client (issue 16, points 1, 2, 4).

A real waitress gateway in this process (build_server + serve, as `python -m gateway` runs them),
a real loopback image host whose routes answer late or when the test lets go, and a fake of TF
Serving's gRPC services (grpcfake.py, named so) whose Predict a test can slow down: the model's
speed is the one thing the local model server cannot be told. Clients are told apart the way
Heroku's router does it, by the last X-Forwarded-For entry, or by API key.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.server import build_server, serve
from gateway.settings import Settings
from tests.gateway.conftest import MODELS_CONFIG
from tests.gateway.grpcfake import FakeGrpcModelServer, serve_fake
from tests.imagehost import ImageServer, image_bytes
from tests.support import free_port, http_json, wait_for

pytestmark = pytest.mark.slow

JPEG = image_bytes("JPEG", size=(64, 48), color="blue")
UPLOAD = {"image_b64": base64.b64encode(JPEG).decode()}
PREDICT = "/v1/models/shapes:predict"
Answer = tuple[int, Any, Any, float]  # status, headers, body, seconds taken


@pytest.fixture(scope="module")
def fake_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FakeGrpcModelServer, str, Path]]:
    base = tmp_path_factory.mktemp("fake-models")
    config = base / "models.config"
    config.write_text(MODELS_CONFIG.format(base=base))
    with serve_fake(FakeGrpcModelServer(), workers=64) as (fake, target):
        yield fake, target, config


@pytest.fixture
def model(fake_model: tuple[FakeGrpcModelServer, str, Path]) -> Iterator[FakeGrpcModelServer]:
    """The fake model server, fast, open and idle at the start of each test (a Predict the
    gateway gave up on may still be sleeping in it)."""
    fake = fake_model[0]
    fake.predict_gate, fake.predict_delay = None, 0.0
    wait_for(lambda: fake.predicting == 0, timeout=15, what="the fake model idle")
    yield fake
    if fake.predict_gate is not None:
        fake.predict_gate.set()


@pytest.fixture
def gateway(
    fake_model: tuple[FakeGrpcModelServer, str, Path], tmp_path: Path
) -> Iterator[Callable[..., str]]:
    """start(**settings) serves a gateway with these settings; its base URL; stopped after."""
    _, target, config = fake_model
    running: list[tuple[threading.Event, threading.Thread, Any]] = []

    def start(**overrides: Any) -> str:
        settings = Settings(
            port=free_port(),
            bind_host="127.0.0.1",
            model_server=target,
            model_config_file=config,
            fetch_allow_private=True,
            sync_status_file=tmp_path / "no-sync-status.json",
            **{"answer_cache_bytes": 0, **overrides},  # the same upload must reach the model
        )
        app = create_app(settings)
        server = build_server(app, settings)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(server, stop, 5.0), daemon=True)
        thread.start()
        running.append((stop, thread, app))
        return f"http://127.0.0.1:{settings.port}"

    yield start
    for stop, thread, app in running:
        stop.set()
        thread.join(15)
        app.extensions["dynoserve.predictor"].close()


def post(url: str, body: Any, headers: dict[str, str]) -> Answer:
    start = time.monotonic()
    status, answer_headers, answer = http_json(url, body, headers)
    return status, answer_headers, answer, time.monotonic() - start


def in_threads(
    count: int, call: Callable[[], Answer]
) -> tuple[list[threading.Thread], list[Answer]]:
    answers: list[Answer] = []
    threads = [
        threading.Thread(target=lambda: answers.append(call()), daemon=True) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads, answers


def hits(server: ImageServer, path: str) -> int:
    return sum(1 for hit, _ in server.hits if hit == path)


def metric(base: str, name: str, headers: dict[str, str] | None = None) -> float:
    """One sample (with its labels, if `name` gives them; else the family's sum) from /metrics."""
    request = urllib.request.Request(base + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    labels = "" if "{" in name else r"(?:\{[^}]*\})?"  # labels given: that series only
    pattern = re.compile(rf"^{re.escape(name)}{labels} (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def address(n: int) -> dict[str, str]:
    """Headers of a client at a documentation address, as Heroku's router would forward it."""
    return {"X-Forwarded-For": f"198.51.100.{n}"}


# --- 1: model capacity is for the model --------------------------------------------------------


def test_slow_fetches_hold_no_model_capacity(
    gateway: Callable[..., str], model: FakeGrpcModelServer, image_server: ImageServer
) -> None:
    """Ten requests wait on a distant host with two admission slots: another client's uploads
    are answered at once, the model idle meanwhile. (Before: the fetches held both slots and the
    uploads waited in the queue until refused after the 12 s budget.)"""
    base = gateway(max_in_flight=2)
    gate = threading.Event()
    slow = image_server.add_held("/slow-hosts/held-1.jpg", JPEG, gate)
    flood, answers = in_threads(10, lambda: post(base + PREDICT, {"image_url": slow}, address(1)))
    try:
        wait_for(lambda: hits(image_server, "/slow-hosts/held-1.jpg") == 10, timeout=20)
        uploads = [post(base + PREDICT, UPLOAD, address(2)) for _ in range(6)]
        pending = len(answers)
    finally:
        gate.set()
    assert [a[0] for a in uploads] == [200] * 6, [a[2] for a in uploads]
    assert pending == 0  # every upload was answered while all ten fetches still waited
    assert max(a[3] for a in uploads) < 5.0
    for thread in flood:
        thread.join(30)
    assert [a[0] for a in answers] == [200] * 10


def test_refused_before_fetching_when_it_cannot_be_answered_in_time(
    gateway: Callable[..., str], model: FakeGrpcModelServer, image_server: ImageServer
) -> None:
    """With the model held and the queue's estimate over the budget, a request with an image
    URL is refused at once and its image is never fetched."""
    base = gateway(max_in_flight=1, admission_budget_s=3.0)
    model.predict_delay = 1.0
    for _ in range(2):  # measured: about 1 image/s, 1 s each
        assert post(base + PREDICT, UPLOAD, address(3))[0] == 200
    model.predict_gate, model.predict_delay = threading.Event(), 0.0
    waiting, _ = in_threads(4, lambda: post(base + PREDICT, UPLOAD, address(3)))
    try:
        wait_for(lambda: model.predicting == 1, timeout=10)
        wait_for(lambda: metric(base, "dynoserve_gateway_admission_estimate_seconds") > 3.0)
        url = image_server.add_bytes("/slow-hosts/never.jpg", JPEG, {"Content-Type": "image/jpeg"})
        # The same client: a newcomer would be let in ahead of its queued requests.
        status, headers, body, _ = post(base + PREDICT, {"image_url": url}, address(3))
    finally:
        model.predict_gate.set()
    assert (status, body["error"]["code"]) == (503, "overloaded"), body
    assert int(headers["Retry-After"]) >= 1
    assert hits(image_server, "/slow-hosts/never.jpg") == 0
    for thread in waiting:
        thread.join(30)


# --- 2: one client cannot starve the rest ------------------------------------------------------


@pytest.mark.parametrize("identity", ["address", "api_key"])
def test_a_flooding_client_is_refused_and_the_others_served(
    gateway: Callable[..., str],
    model: FakeGrpcModelServer,
    image_server: ImageServer,
    identity: str,
) -> None:
    """Client A keeps twice the fetch bound of slow-URL requests in flight; it gets 429 beyond
    its share while client B's requests (a fast host) are all answered. Same address for both
    in the API-key case: the key decides."""
    keys = ("key-a", "key-b")
    settings: dict[str, Any] = {"max_in_flight": 4, "max_fetches": 8, "max_batch": 8}
    if identity == "api_key":
        settings["api_keys"] = keys
        a = {"X-API-Key": keys[0]} | address(5)
        b = {"X-API-Key": keys[1]} | address(5)
    else:
        a, b = address(5), address(6)
    base = gateway(**settings)
    gate = threading.Event()
    path = f"/slow-hosts/held-{identity}.jpg"
    slow = image_server.add_held(path, JPEG, gate)
    fast = image_server.add_bytes("/slow-hosts/fast.jpg", JPEG, {"Content-Type": "image/jpeg"})
    flood, answers = in_threads(16, lambda: post(base + PREDICT, {"image_url": slow}, a))
    try:
        wait_for(lambda: hits(image_server, path) + len(answers) == 16, timeout=20)
        others = [post(base + PREDICT, {"image_url": fast}, b) for _ in range(8)]
    finally:
        gate.set()
    for thread in flood:
        thread.join(30)
    assert [o[0] for o in others] == [200] * 8, [o[2] for o in others]
    refused = [x for x in answers if x[0] != 200]
    assert refused, "the flood was never refused"
    assert {(x[0], x[2]["error"]["code"]) for x in refused} == {(429, "client_over_share")}
    assert all(x[1]["Retry-After"] == "1" for x in refused)
    assert len(answers) == 16
    assert len(refused) < 16
    over_share = 'dynoserve_gateway_refusals_total{pool="fetches",reason="over_share"}'
    assert metric(base, over_share, b) == len(refused)
    assert metric(base, "dynoserve_gateway_fetches_in_progress", b) == 0  # all given back


def test_a_hundred_clients_behind_one_address_are_all_served(
    gateway: Callable[..., str], model: FakeGrpcModelServer, image_server: ImageServer
) -> None:
    """The original experiment: 100 concurrent clients from one address, nobody else. Shares
    apply under contention only, so none is refused."""
    base = gateway()
    fast = image_server.add_bytes("/slow-hosts/one.jpg", JPEG, {"Content-Type": "image/jpeg"})
    start = threading.Barrier(100)

    def call() -> Answer:
        start.wait(30)
        return post(base + PREDICT, {"image_url": fast}, address(7))

    threads, answers = in_threads(100, call)
    for thread in threads:
        thread.join(60)
    assert sorted(a[0] for a in answers) == [200] * 100, {a[0] for a in answers}


# --- 4: an answer before Heroku gives up -------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "timeout", "host_delay", "model_delay"),
    [
        ("fetch", 2.0, 5.0, 0.0),  # the host is slower than the request's whole deadline
        ("inference", 3.0, 1.5, 3.0),  # the image comes just in time, then a slow model
    ],
)
def test_the_deadline_names_the_stage_that_ran_out(
    gateway: Callable[..., str],
    model: FakeGrpcModelServer,
    image_server: ImageServer,
    stage: str,
    timeout: float,
    host_delay: float,
    model_delay: float,
) -> None:
    base = gateway(request_timeout_s=timeout, admission_budget_s=timeout, fetch_total_timeout_s=2.0)
    model.predict_delay = model_delay
    url = image_server.add_delayed(f"/slow-hosts/late-{stage}.jpg", JPEG, host_delay)
    status, _, body, took = post(base + PREDICT, {"image_url": url}, address(8))
    assert status == 504, body
    assert body["error"]["code"] == "deadline_exceeded"
    assert body["error"]["stage"] == stage
    assert took < timeout + 0.75  # answered by the deadline (plus scheduling on a busy machine)


def test_time_in_the_queue_counts_against_the_deadline(
    gateway: Callable[..., str], model: FakeGrpcModelServer
) -> None:
    """A request that waited in the queue gets only what is left for Predict: answered (504)
    by its deadline from arrival, not a full gRPC deadline after it was let in."""
    timeout = 4.0
    base = gateway(max_in_flight=1, request_timeout_s=timeout, admission_budget_s=timeout)
    # The second request waits ~2.5 s for the slot, then has ~1.5 s for a 2.5 s Predict.
    model.predict_delay = 2.5
    first, answers = in_threads(1, lambda: post(base + PREDICT, UPLOAD, address(9)))
    wait_for(lambda: model.predicting == 1, timeout=10)
    status, _, body, took = post(base + PREDICT, UPLOAD, address(10))
    first[0].join(30)
    assert answers, "the first request was never answered"
    assert metric(base, "dynoserve_gateway_queue_wait_seconds_sum") > 1.0  # it did wait
    assert (status, body["error"]["code"], body["error"]["stage"]) == (
        504,
        "deadline_exceeded",
        "inference",
    ), body
    assert took < timeout + 0.75


def test_a_slow_upload_spends_from_the_deadline(
    gateway: Callable[..., str], model: FakeGrpcModelServer
) -> None:
    """The deadline counts from the request's first byte, not from when waitress hands the
    app the whole body: a client that takes 2 s to upload leaves 1 s of a 3 s deadline for a
    2 s Predict, so the answer is a 504 at about 3 s from the first byte, not a 200 at 4 s."""
    timeout = 3.0
    base = gateway(request_timeout_s=timeout, admission_budget_s=timeout)
    model.predict_delay = 2.0
    port = int(base.rsplit(":", 1)[1])
    body = json.dumps(UPLOAD).encode()
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Forwarded-For: 198.51.100.11\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        start = time.monotonic()
        sock.sendall(head + body[:10])
        time.sleep(2.0)  # the upload itself is slow: nothing to poll for
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        took = time.monotonic() - start
    status_line, _, rest = answer.partition(b"\r\n")
    payload = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert status_line.split()[1] == b"504", answer[:300]
    assert (payload["error"]["code"], payload["error"]["stage"]) == (
        "deadline_exceeded",
        "inference",
    )
    assert took < timeout + 0.75


def test_a_huge_declared_body_is_refused_without_being_read(
    gateway: Callable[..., str], model: FakeGrpcModelServer
) -> None:
    """A client declaring 100 MB (over twice the limit) gets 413 at once: waitress would
    otherwise spool it all to disk (up to its own 1 GB) before the app could refuse it."""
    base = gateway(max_request_bytes=1_000_000)
    port = int(base.rsplit(":", 1)[1])
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {100_000_000}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + b"{" * 65536)  # a start of the body; nothing more comes
        answer = sock.recv(65536)
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"413", answer[:300]
