"""The answer cache on the real request path: gateway process (no TensorFlow) -> the local model
server with model `shapes` versions 1 and 2, images from the real loopback image host. /metrics
tells whether a Predict call or an admission slot was used. Slow: it starts gateway processes.
"""

from __future__ import annotations

import base64
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway.conftest import GatewayProcess, Stack, start_gateway
from tests.imagehost import ImageServer, image_bytes
from tests.support import http_json

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/shapes:predict"


@pytest.fixture(scope="module")
def cached_gateway(model_stack: Stack) -> Iterator[GatewayProcess]:
    """A gateway of this module's own (its /metrics count only these tests), cache on."""
    running = start_gateway(model_stack, "answer-cache")
    yield running
    running.process.stop()


def image(color: str, size: int = 24) -> bytes:
    return image_bytes("PNG", size=(size, size), color=color)


def post(gateway: GatewayProcess, body: Any, query: str = "") -> tuple[int, str | None, Any]:
    status, headers, answer = http_json(gateway.base + PREDICT + query, body)
    return status, headers.get("Dynoserve-Cache"), answer


def metric(gateway: GatewayProcess, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(gateway.base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def predict_calls(gateway: GatewayProcess) -> float:
    name = "dynoserve_gateway_inference_duration_seconds_count"
    return metric(gateway, name, '{model="shapes"}')


def admitted(gateway: GatewayProcess) -> float:
    return metric(gateway, "dynoserve_gateway_admitted_requests_total")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_hit_after_a_miss_uses_no_predict_and_no_slot(
    cached_gateway: GatewayProcess, image_server: ImageServer
) -> None:
    url = image_server.add_bytes("/stack-cache/first.png", image("purple"))
    status, cache, miss = post(cached_gateway, {"image_url": url})
    assert (status, cache) == (200, "miss"), miss
    calls, slots = predict_calls(cached_gateway), admitted(cached_gateway)
    hits = metric(cached_gateway, "dynoserve_gateway_answer_cache_hits_total")
    status, cache, hit = post(cached_gateway, {"image_url": url})
    assert (status, cache) == (200, "hit"), hit
    assert hit["predictions"] == miss["predictions"]
    assert hit["version"] == miss["version"] == 2
    assert hit["timings_ms"]["inference"] == 0
    assert hit["timings_ms"]["fetch"] > 0  # fetched again: the key is its bytes
    assert (predict_calls(cached_gateway), admitted(cached_gateway)) == (calls, slots)
    assert metric(cached_gateway, "dynoserve_gateway_answer_cache_hits_total") == hits + 1
    # The same bytes uploaded are the same image.
    status, cache, _ = post(cached_gateway, {"image_b64": b64(image("purple"))})
    assert (status, cache) == (200, "hit")
    assert metric(cached_gateway, "dynoserve_gateway_answer_cache_bytes") > 0


def test_top_k_does_not_split_entries(
    cached_gateway: GatewayProcess, image_server: ImageServer
) -> None:
    url = image_server.add_bytes("/stack-cache/topk.png", image("orange"))
    status, cache, one = post(cached_gateway, {"image_url": url, "top_k": 1})
    assert (status, cache, len(one["predictions"])) == (200, "miss", 1)
    status, cache, three = post(cached_gateway, {"image_url": url, "top_k": 3})
    assert (status, cache, len(three["predictions"])) == (200, "hit", 3)
    assert three["predictions"][0] == one["predictions"][0]
    assert sum(p["score"] for p in three["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_the_same_url_with_new_content_is_a_miss(
    cached_gateway: GatewayProcess, image_server: ImageServer
) -> None:
    url = image_server.add_bytes("/stack-cache/changes.png", image("black"))
    assert post(cached_gateway, {"image_url": url})[:2] == (200, "miss")
    assert post(cached_gateway, {"image_url": url})[:2] == (200, "hit")
    image_server.add_bytes("/stack-cache/changes.png", image("white"))
    calls = predict_calls(cached_gateway)
    assert post(cached_gateway, {"image_url": url})[:2] == (200, "miss")
    assert predict_calls(cached_gateway) == calls + 1


def test_each_version_has_its_own_answers(cached_gateway: GatewayProcess) -> None:
    body = {"image_b64": b64(image("navy", 30))}
    status, cache, v1 = post(cached_gateway, body, "?version=1")
    assert (status, cache, v1["version"]) == (200, "miss", 1)
    status, cache, v2 = post(cached_gateway, body, "?version=2")
    assert (status, cache, v2["version"]) == (200, "miss", 2)
    assert v1["predictions"] != v2["predictions"]  # the two versions' weights differ
    status, cache, stable = post(cached_gateway, body, "?label=stable")  # stable is version 1
    assert (status, cache, stable["version"]) == (200, "hit", 1)
    assert stable["predictions"] == v1["predictions"]
    status, cache, latest = post(cached_gateway, body)  # latest is version 2
    assert (status, cache, latest["predictions"]) == (200, "hit", v2["predictions"])


def test_a_batch_sends_only_its_misses(
    cached_gateway: GatewayProcess, image_server: ImageServer
) -> None:
    known = image_server.add_bytes("/stack-cache/known.png", image("teal"))
    assert post(cached_gateway, {"image_url": known})[:2] == (200, "miss")
    fresh = {"image_b64": b64(image("olive"))}
    misses = metric(cached_gateway, "dynoserve_gateway_answer_cache_misses_total")
    status, cache, body = post(cached_gateway, {"images": [{"image_url": known}, fresh]})
    assert (status, cache) == (200, "partial"), body
    assert all(len(item["predictions"]) == 3 for item in body["results"])
    assert metric(cached_gateway, "dynoserve_gateway_answer_cache_misses_total") == misses + 1


def test_the_bound_holds_and_the_least_recently_used_go(
    model_stack: Stack, image_server: ImageServer
) -> None:
    # Three entries of the 3-class test model (536 bytes each) and its class names (461 bytes).
    small = start_gateway(model_stack, "answer-cache-small", DYNOSERVE_ANSWER_CACHE_BYTES="2100")
    try:
        colors = ["red", "green", "blue", "yellow", "cyan", "magenta"]
        urls = [image_server.add_bytes(f"/stack-cache/bound-{c}.png", image(c, 16)) for c in colors]
        for url in urls:
            assert post(small, {"image_url": url})[:2] == (200, "miss")
            assert 0 < metric(small, "dynoserve_gateway_answer_cache_bytes") <= 2100
        evicted = '{reason="size"}'
        assert metric(small, "dynoserve_gateway_answer_cache_evictions_total", evicted) >= 3
        assert post(small, {"image_url": urls[-1]})[:2] == (200, "hit")
        assert post(small, {"image_url": urls[0]})[:2] == (200, "miss")
    finally:
        small.process.stop()


def test_off_with_zero(model_stack: Stack, image_server: ImageServer) -> None:
    off = start_gateway(model_stack, "answer-cache-off", DYNOSERVE_ANSWER_CACHE_BYTES="0")
    try:
        url = image_server.add_bytes("/stack-cache/off.png", image("brown"))
        for _ in range(2):
            assert post(off, {"image_url": url})[:2] == (200, None)
        assert predict_calls(off) == 2
        assert metric(off, "dynoserve_gateway_answer_cache_hits_total") == 0
        assert metric(off, "dynoserve_gateway_answer_cache_misses_total") == 0
    finally:
        off.process.stop()
