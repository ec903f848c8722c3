"""The memory budget in a real `python -m gateway`: one client floods it with ~6 MB base64
photos while another sends small ones. The gateway's peak RSS (VmHWM) stays within the budget
plus a fixed allowance, the flood is refused with 503/429 JSON and Retry-After, the other client
is never refused. The model server is FakeModelServer (tests/gateway/memload.py), a fake named
so: it answers after 50 ms per image, one call at a time, which keeps requests waiting in the
gateway the way a busy model server does, without TensorFlow's CPU and memory in the test."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.memload import (
    MODEL,
    Answer,
    LoadResult,
    b64_body,
    fake_model_server,
    gateway_process,
    noisy_jpeg,
    post,
    run_clients,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
BUDGET = 64 * MiB
# Not counted by the budget: waitress's in-memory part of each body it is receiving (up to
# 512 KB per connection before it spools to a temp file), thread stacks touched, Python's and
# the allocator's own overhead. Measured peak over start: 48 MiB for this test's load.
ALLOWANCE = 32 * MiB
FLOODERS = 16
SECONDS = 10.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    work: Path = tmp_path_factory.mktemp("membudget")
    with (
        fake_model_server(delay_s=0.05) as target,
        gateway_process(
            target,
            work,
            DYNOSERVE_MEMORY_BUDGET_BYTES=str(BUDGET),
            DYNOSERVE_MAX_REQUEST_BYTES=str(8 * MiB),
        ) as (process, base),
    ):
        yield process.pid, base


def small_client(base: str, until: float, answers: list[Answer]) -> None:
    """Another client (its own X-Forwarded-For address) sending a small photo now and then."""
    body = json.dumps({"image_b64": base64.b64encode(noisy_jpeg(320, 240)).decode()}).encode()
    headers = {"X-Forwarded-For": "203.0.113.50"}
    while time.monotonic() < until:
        answers.append(post(base, f"/v1/models/{MODEL}:predict", body, headers))
        time.sleep(0.2)


def flood(pid: int, base: str) -> tuple[LoadResult, list[Answer]]:
    post(base, f"/v1/models/{MODEL}:predict", b64_body(noisy_jpeg(64, 64)))  # warm up
    others: list[Answer] = []
    other = threading.Thread(target=small_client, args=(base, time.monotonic() + SECONDS, others))
    other.start()
    # One client (no X-Forwarded-For: all from 127.0.0.1) with FLOODERS connections.
    result = run_clients(base, pid, b64_body(noisy_jpeg()), FLOODERS, SECONDS)
    other.join()
    return result, others


def test_peak_rss_stays_within_the_budget_and_only_the_flooder_is_refused(
    gateway: tuple[int, str],
) -> None:
    pid, base = gateway
    result, others = flood(pid, base)
    summary = result.summary()
    print(summary, f"; the other client: {len(others)} answers")
    grown = (result.hwm_kib - result.rss_start_kib) * 1024
    assert grown <= BUDGET + ALLOWANCE, summary
    statuses = result.statuses()
    assert statuses[(200, None)] >= 1, summary
    refused = [a for a in result.answers if a.status != 200]
    assert refused, f"the budget never bit: {summary}"
    for answer in refused:
        assert (answer.status, answer.code) in {(503, "memory_budget"), (429, "client_over_share")}
        assert answer.retry_after == "1"
    assert others, "the small client never got an answer"
    assert {(a.status, a.code) for a in others} == {(200, None)}, others
