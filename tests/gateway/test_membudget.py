"""The memory budget: what a body costs, the fair byte pool behind it, the per-request hook in
the app (Flask's test client, FakePredictor behind it) and bodies read with few copies."""

from __future__ import annotations

import base64
import contextvars
import io
import json
import os
import threading
import time
import tracemalloc
from typing import Any

import pytest

from gateway.bodies import decode_b64, parse_json, read_body
from gateway.errors import BadRequest as GatewayBadRequest
from gateway.errors import ConfigError, InvalidParameter, PayloadTooLarge, TooManyRequests
from gateway.fetch import FetchPolicy, ImageFetcher
from gateway.images import check_image
from gateway.interface import PredictRequest, PredictResult
from gateway.membudget import (
    FETCHED_FACTOR,
    JSON_FACTOR,
    MULTIPART_FACTOR,
    PIXEL_BYTES,
    MemoryBudget,
    MemoryBudgetFull,
    Reservation,
    body_cost,
    charge_fetched,
    for_request,
    largest_body_cost,
    tune_malloc,
)
from gateway.netguard import system_resolver
from gateway.settings import Settings
from tests.gateway.conftest import FakePredictor
from tests.imagehost import ImageServer, image_bytes

MiB = 1024 * 1024
PREDICT = "/v1/models/shapes:predict"
PNG = image_bytes("PNG")


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


# --- what a body costs --------------------------------------------------------------------------


def test_a_body_costs_its_length_times_the_copies_its_kind_makes() -> None:
    assert body_cost(1000, "application/json") == int(1000 * JSON_FACTOR)
    assert body_cost(1000, "application/vnd.api+json") == int(1000 * JSON_FACTOR)
    assert body_cost(1000, "multipart/form-data") == int(1000 * MULTIPART_FACTOR)
    assert body_cost(1000, "application/x-www-form-urlencoded") == 2000
    assert body_cost(1000, "text/plain") == 1000
    assert body_cost(0, "application/json") == 0
    assert largest_body_cost(MiB) == int(MiB * MULTIPART_FACTOR)


def test_the_budget_must_fit_the_largest_body() -> None:
    Settings(memory_budget_bytes=largest_body_cost(12 * MiB)).validate()
    with pytest.raises(ConfigError, match="DYNOSERVE_MEMORY_BUDGET_BYTES"):
        Settings(memory_budget_bytes=largest_body_cost(12 * MiB) - 1).validate()


# --- the pool -------------------------------------------------------------------------------------


def test_a_full_budget_is_a_503_and_a_flooder_over_its_share_a_429() -> None:
    budget = MemoryBudget(100 * MiB)
    flood = [budget.reserve("flooder", 20 * MiB) for _ in range(3)]  # 60 of 100: contended
    other = budget.reserve("other", 10 * MiB)
    with pytest.raises(TooManyRequests) as over:  # 80 > its share of (100 - 25) / 2
        budget.reserve("flooder", 20 * MiB)
    assert over.value.status == 429
    assert over.value.code == "client_over_share"
    assert "fair share" in over.value.message
    more = budget.reserve("other", 20 * MiB)  # the other client still gets in
    with pytest.raises(MemoryBudgetFull) as full:
        budget.reserve("third", 20 * MiB)  # 90 + 20 > 100
    assert (full.value.status, full.value.code) == (503, "memory_budget")
    assert full.value.retry_after is not None
    for reservation in (*flood, other, more):
        reservation.release()
    assert budget.in_use == 0


def test_release_gives_back_once_and_a_refused_growth_holds_nothing_more() -> None:
    budget = MemoryBudget(10 * MiB)
    reservation = budget.reserve("a", 4 * MiB)
    with pytest.raises(TooManyRequests):  # 11 > 10, and a alone holds what there is
        reservation.grow(7 * MiB)
    assert reservation.held == 4 * MiB
    assert budget.in_use == 4 * MiB
    reservation.release()
    reservation.release()
    assert budget.in_use == 0
    assert budget.pool.held("a") == 0


def test_a_full_budget_is_waited_for_and_a_flooder_is_not() -> None:
    budget = MemoryBudget(100 * MiB)
    first, second = budget.reserve("a", 35 * MiB), budget.reserve("b", 35 * MiB)
    threading.Timer(0.2, first.release).start()
    started = time.monotonic()
    third = budget.reserve("c", 31 * MiB, wait_s=10)  # fits once a's 35 are back
    assert 0.15 < time.monotonic() - started < 5
    started = time.monotonic()
    with pytest.raises(TooManyRequests):  # b would be over its share: no wait
        budget.reserve("b", 10 * MiB, wait_s=10)
    with pytest.raises(MemoryBudgetFull):  # the client left: no more wait
        budget.reserve("d", 40 * MiB, wait_s=10, gone=lambda: True)
    assert time.monotonic() - started < 1
    with pytest.raises(MemoryBudgetFull):  # nobody gives back in time
        budget.reserve("d", 40 * MiB, wait_s=0.3)
    assert time.monotonic() - started >= 0.3
    second.release()
    third.release()
    assert budget.in_use == 0


def _fetch_twice_then_fail(reservation: Reservation) -> None:
    charge_fetched(1000)
    # A batch's fetches run in copies of the request's context on other threads.
    worker = threading.Thread(target=contextvars.copy_context().run, args=(charge_fetched, 2000))
    worker.start()
    worker.join()
    assert reservation.held == MiB + 3000 * FETCHED_FACTOR
    raise KeyError("the request failed")


def test_fetched_bytes_count_against_the_current_request_in_its_threads() -> None:
    budget = MemoryBudget(100 * MiB)
    charge_fetched(MiB)  # no request: nothing to count against
    assert budget.in_use == 0
    with pytest.raises(KeyError), for_request(budget.reserve("a", MiB)) as reservation:
        _fetch_twice_then_fail(reservation)
    assert budget.in_use == 0  # released however the request ended
    charge_fetched(MiB)
    assert budget.in_use == 0


def test_a_fetched_image_is_charged_as_it_streams_in(image_server: ImageServer) -> None:
    url = image_server.add_bytes("/big.bin", os.urandom(MiB))
    fetcher = ImageFetcher(
        FetchPolicy(MiB, 2.0, 2.0, 4.0, 0, (), allow_private=True), system_resolver
    )
    budget = MemoryBudget(8 * MiB)
    with for_request(budget.reserve("a", 0)) as reservation:
        assert len(fetcher.fetch(url).data) == MiB
        assert reservation.held == MiB * FETCHED_FACTOR
    assert budget.in_use == 0
    # b holds its share already (3/4 of the pool, nobody else there): refused part way.
    with pytest.raises(TooManyRequests), for_request(budget.reserve("b", 6 * MiB)):
        fetcher.fetch(url)
    assert budget.in_use == 0
    fetcher.close()


def test_pixels_decoded_whole_are_charged_and_too_many_are_413() -> None:
    budget = MemoryBudget(8 * MiB)
    with for_request(budget.reserve("a", 0)) as reservation:
        check_image(image_bytes("PNG", size=(500, 400)), 40_000_000)
        assert reservation.held == 500 * 400 * PIXEL_BYTES
        check_image(image_bytes("JPEG", size=(500, 400)), 40_000_000)  # decoded at 1/8 only
        assert reservation.held == 500 * 400 * PIXEL_BYTES
        with pytest.raises(PayloadTooLarge, match="1000x1000"):  # 8 MB: over 3/4 of the pool
            check_image(image_bytes("PNG", size=(1000, 1000)), 40_000_000)
    check_image(image_bytes("PNG", size=(1000, 1000)), 40_000_000)  # outside a request
    assert budget.in_use == 0


# --- the app: reserve before reading, release after ----------------------------------------------


class Recording(io.BytesIO):
    """A request body that remembers whether anybody read it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.touched = False

    def read(self, size: int | None = -1) -> bytes:
        self.touched = True
        return super().read(size)

    def readinto(self, buffer: Any) -> int:
        self.touched = True
        return super().readinto(buffer)


def post_json(client: Any, body: bytes, **environ: str) -> tuple[Any, Recording]:
    stream = Recording(body)
    response = client.post(
        PREDICT,
        input_stream=stream,
        content_length=len(body),
        content_type="application/json",
        environ_base=environ,
    )
    return response, stream


def b64_json(data: bytes) -> bytes:
    return json.dumps({"image_b64": base64.b64encode(data).decode()}).encode()


def budget_of(client: Any) -> MemoryBudget:
    budget: MemoryBudget = client.application.extensions["dynoserve.memory"]
    return budget


def test_a_body_over_the_free_budget_is_refused_unread(
    make_client: Any, fake_predictor: FakePredictor
) -> None:
    client = make_client(
        memory_budget_bytes=64 * MiB, max_request_bytes=12 * MiB, memory_wait_s=0.0
    )
    budget = budget_of(client)
    held = [budget.reserve("x", 40 * MiB), budget.reserve("y", 20 * MiB)]
    response, stream = post_json(client, b64_json(PNG) + b" " * 2 * MiB)  # 7.5 MiB more
    assert (response.status_code, error_code(response)) == (503, "memory_budget")
    assert response.headers["Retry-After"] == "1"
    assert not stream.touched
    assert not fake_predictor.calls
    for reservation in held:
        reservation.release()
    response, stream = post_json(client, b64_json(PNG))
    assert response.status_code == 200
    assert stream.touched
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'dynoserve_gateway_refusals_total{pool="bytes",reason="full"} 1.0' in metrics
    assert "dynoserve_gateway_memory_reserved_bytes 0.0" in metrics


def test_a_client_over_its_share_gets_429_and_others_are_served(make_client: Any) -> None:
    client = make_client(memory_budget_bytes=64 * MiB, max_request_bytes=12 * MiB)
    budget = budget_of(client)
    flooding = budget.reserve("addr:198.51.100.7", 40 * MiB)  # over half the pool, over 3/4 / 2
    budget.reserve("addr:198.51.100.8", MiB)
    body = b64_json(PNG) + b" " * MiB
    response, stream = post_json(client, body, REMOTE_ADDR="198.51.100.7")
    assert (response.status_code, error_code(response)) == (429, "client_over_share")
    assert response.headers["Retry-After"] == "1"
    assert not stream.touched
    response, _ = post_json(client, body, REMOTE_ADDR="198.51.100.9")
    assert response.status_code == 200
    flooding.release()


class Watching(FakePredictor):
    """Records what the budget holds while the prediction runs, then fails as told."""

    def __init__(self, budget: MemoryBudget | None = None, crash: bool = False) -> None:
        super().__init__()
        self.budget = budget
        self.crash = crash
        self.held_during: list[int] = []

    def predict(self, request: PredictRequest) -> PredictResult:
        assert self.budget is not None
        self.held_during.append(self.budget.in_use)
        if self.crash:
            raise RuntimeError("a bug")
        return super().predict(request)


@pytest.mark.parametrize("crash", [False, True])
def test_the_reservation_lasts_the_request_and_is_always_given_back(
    make_client: Any, crash: bool
) -> None:
    predictor = Watching(crash=crash)
    client = make_client(predictor=predictor)
    predictor.budget = budget_of(client)
    body = b64_json(PNG)
    response, _ = post_json(client, body)
    assert response.status_code == (500 if crash else 200)
    assert predictor.held_during == [body_cost(len(body), "application/json")]
    assert predictor.budget.in_use == 0
    bad = json.dumps({"image_b64": "not base64!"}).encode()
    assert error_code(post_json(client, bad)[0]) == "invalid_base64"
    assert predictor.budget.in_use == 0


def test_a_body_over_the_request_cap_is_413_without_a_reservation(make_client: Any) -> None:
    client = make_client(max_request_bytes=MiB)
    response, stream = post_json(client, b" " * (MiB + 1))
    assert (response.status_code, error_code(response)) == (413, "request_too_large")
    assert not stream.touched
    assert budget_of(client).in_use == 0


def test_a_chunked_body_reserves_the_cap_and_is_read_up_to_it(
    make_client: Any, fake_predictor: FakePredictor
) -> None:
    predictor = Watching()
    client = make_client(predictor=predictor, max_request_bytes=MiB)
    predictor.budget = budget_of(client)
    chunked = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    environ = {"wsgi.input_terminated": True}
    ok = client.post(
        PREDICT, input_stream=io.BytesIO(b64_json(PNG)), headers=chunked, environ_base=environ
    )
    assert ok.status_code == 200, ok.get_json()
    assert predictor.held_during == [body_cost(MiB, "application/json")]
    big = b'{"image_url": "' + b"x" * MiB + b'"}'
    refused = client.post(
        PREDICT, input_stream=io.BytesIO(big), headers=chunked, environ_base=environ
    )
    assert (refused.status_code, error_code(refused)) == (413, "request_too_large")


# --- copies -------------------------------------------------------------------------------------


class Measuring(FakePredictor):
    """Traced Python memory in use when the prediction starts, over a baseline."""

    baseline = 0
    held = 0

    def predict(self, request: PredictRequest) -> PredictResult:
        self.held = tracemalloc.get_traced_memory()[0] - self.baseline
        return super().predict(request)


def test_while_a_request_waits_it_holds_its_image_not_its_body(make_client: Any) -> None:
    predictor = Measuring()
    client = make_client(predictor=predictor)
    image = os.urandom(3 * MiB)  # not an image: the answer does not matter, the bytes held do
    body = b64_json(image)
    post_json(client, b64_json(b"warm up"))
    tracemalloc.start()
    try:
        predictor.baseline = tracemalloc.get_traced_memory()[0]
        post_json(client, body)
    finally:
        tracemalloc.stop()
    # Before: werkzeug's cached body, the parsed text's string and the image (about 3.7x).
    assert len(image) <= predictor.held < len(image) + MiB


# --- bodies.py ----------------------------------------------------------------------------------


def test_read_body_reads_exactly_or_says_what_is_wrong() -> None:
    assert read_body(io.BytesIO(b"abcdef"), 6, cap=10) == b"abcdef"
    with pytest.raises(GatewayBadRequest, match="ended after 3 of its 6") as short:
        read_body(io.BytesIO(b"abc"), 6, cap=10)
    assert short.value.code == "incomplete_body"
    assert read_body(io.BytesIO(b"x" * 10), None, cap=10) == b"x" * 10
    with pytest.raises(PayloadTooLarge) as large:
        read_body(io.BytesIO(b"x" * 11), None, cap=10)
    assert large.value.code == "request_too_large"


def test_parse_json_frees_the_body_and_refuses_what_is_not_json() -> None:
    body = bytearray(b'{"a": [1, "\xc3\xa9"]}')
    assert parse_json(body) == {"a": [1, "\u00e9"]}
    assert body == b""  # its memory is given back before the parse
    assert parse_json(bytearray('{"u": 16}'.encode("utf-16"))) == {"u": 16}
    for bad in (b"", b"{", b"\xff\xfe\xfd", b"[" * 100_000):
        assert parse_json(bytearray(bad)) is None


def test_decode_b64_takes_data_urls_and_refuses_anything_else() -> None:
    assert decode_b64("aGk=", 10) == b"hi"
    assert decode_b64("data:image/png;base64,aGk=", 10) == b"hi"
    for bad in ("aGk", "aG k=", "aGk=\n", "aGk=aGk=", "\u00e9\u00e9\u00e9\u00e9"):
        with pytest.raises(InvalidParameter):
            decode_b64(bad, 10)
    with pytest.raises(PayloadTooLarge):
        decode_b64("aGk=" * 10, 10)


def test_malloc_thresholds_are_fixed_on_glibc() -> None:
    assert tune_malloc()
