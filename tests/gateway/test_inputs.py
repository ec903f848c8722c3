"""ImagePreparer against a real loopback image host: fetch slots (DYNOSERVE_MAX_FETCHES) taken
per URL before fetching, shared fairly between clients, given back after; a batch's fetches in
parallel with the first on the caller's thread; the request's deadline ends a fetch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from gateway.deadline import Deadline
from gateway.errors import DeadlineExceeded, FetchCapacity, TooManyRequests
from gateway.fetch import FetchPolicy, ImageFetcher
from gateway.inputs import ImagePreparer
from gateway.interface import ImageInput, ItemResult
from gateway.metrics import Metrics
from gateway.signatures import InputPlan
from tests.imagehost import ImageServer, image_bytes
from tests.support import wait_for

JPEG = image_bytes("JPEG", size=(16, 16), color="blue")
ENCODED = InputPlan(key="images", kind="encoded")
Prepared = tuple[list[ItemResult], list[tuple[int, bytes]]]


@pytest.fixture
def preparer() -> Iterator[ImagePreparer]:
    policy = FetchPolicy(8 * 1024 * 1024, 3.0, 5.0, 8.0, 3, (), True)
    fetcher = ImageFetcher(policy)
    images = ImagePreparer(fetcher, 40_000_000, Metrics(), max_fetches=4)
    yield images
    images.close()
    fetcher.close()


def test_slots_are_taken_per_url_and_given_back(
    preparer: ImagePreparer, image_server: ImageServer
) -> None:
    gate = threading.Event()
    slow = image_server.add_held("/inputs/held.jpg", JPEG, gate)
    batch = (ImageInput(url=slow), ImageInput(url=slow), ImageInput(data=JPEG))
    out: list[Prepared] = []
    worker = threading.Thread(
        target=lambda: out.append(preparer.prepare_all(batch, ENCODED, "a")), daemon=True
    )
    worker.start()
    try:
        wait_for(lambda: hits(image_server, "/inputs/held.jpg") == 2, timeout=10)
        assert preparer.fetches.held("a") == 2  # the upload takes none
    finally:
        gate.set()
    worker.join(10)
    items, payloads = out[0]
    assert [item.error for item in items] == [None, None, None]
    assert [index for index, _ in payloads] == [0, 1, 2]
    assert preparer.fetches.in_use == 0


def test_past_the_bound_and_past_a_share(preparer: ImagePreparer) -> None:
    """Four slots: a lone client may hold three (a quarter stays for newcomers); a second
    client gets the last; then a's next is its own fault (429), anyone's is the bound (503)."""
    for _ in range(3):
        assert preparer.fetches.try_take("a", 1) is None
    url = (ImageInput(url="http://127.0.0.1:9/x.jpg"),)
    with pytest.raises(TooManyRequests) as over:
        preparer.prepare_all(url, ENCODED, "a")
    assert over.value.status == 429
    assert preparer.fetches.try_take("b", 1) is None
    with pytest.raises(FetchCapacity) as full:
        preparer.prepare_all(url, ENCODED, "c")
    assert (full.value.status, full.value.code) == (503, "fetch_capacity")
    assert preparer.prepare_all((ImageInput(data=JPEG),), ENCODED, "c")[0][0].error is None


def test_a_batch_is_fetched_in_parallel(preparer: ImagePreparer, image_server: ImageServer) -> None:
    """All three of a batch's fetches are at the host at once (the first on this thread)."""
    gate = threading.Event()
    held = image_server.add_held("/inputs/together.jpg", JPEG, gate)
    out: list[Prepared] = []
    batch = (ImageInput(url=held),) * 3
    worker = threading.Thread(
        target=lambda: out.append(preparer.prepare_all(batch, ENCODED, "a")), daemon=True
    )
    worker.start()
    try:
        wait_for(lambda: hits(image_server, "/inputs/together.jpg") == 3, timeout=10)
    finally:
        gate.set()
    worker.join(10)
    assert len(out[0][1]) == 3


def hits(server: ImageServer, path: str) -> int:
    return sum(1 for hit, _ in server.hits if hit == path)


def test_the_request_deadline_ends_a_fetch(
    preparer: ImagePreparer, image_server: ImageServer
) -> None:
    late = image_server.add_delayed("/inputs/too-late.jpg", JPEG, 3.0)
    start = time.monotonic()
    items, payloads = preparer.prepare_all(
        (ImageInput(url=late),), ENCODED, "a", Deadline.after(0.5)
    )
    assert time.monotonic() - start < 2.9  # cut by the deadline, not answered by the host
    assert payloads == []
    error = items[0].error
    assert isinstance(error, DeadlineExceeded)
    assert error.stage == "fetch"
    assert preparer.metrics is not None
    misses = preparer.metrics.registry.get_sample_value(
        "dynoserve_gateway_deadline_misses_total", {"stage": "fetch"}
    )
    assert misses == 1
