"""The answer cache (gateway/answercache.py): its byte bound, LRU order, versions and threads;
then in a real app against a real gRPC server (the scripted fake, which counts Predict calls
and can be stopped) with images from the real loopback image host."""

from __future__ import annotations

import gc
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from gateway import answercache
from gateway.answercache import AnswerCache, Key, entry_bytes
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.gateway.grpcfake import FakeGrpcModelServer, serve_fake
from tests.imagehost import ImageServer, image_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(n: int, version: int = 1, model: str = "m") -> Key:
    return (answercache.digest(str(n).encode()), model, version, "serving_default")


def row(classes: int = 3, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(classes)]


def counter(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


# --- the cache alone --------------------------------------------------------------------------


def test_least_recently_used_go_first_and_the_bound_holds() -> None:
    metrics = Metrics()
    one = entry_bytes(key(0), answercache.Answer(answercache.array("f", row()), None))
    cache = AnswerCache(4 * one, metrics)
    for n in range(4):
        cache.put(key(n), row(seed=n), None)
    assert cache.get(key(0)) is not None  # 0 is now the most recently used
    cache.put(key(4), row(), None)
    assert cache.get(key(1)) is None  # the least recently used went
    assert all(cache.get(key(n)) is not None for n in (0, 2, 3, 4))
    assert cache.bytes == 4 * one <= cache.limit_bytes
    assert counter(metrics, "dynoserve_gateway_answer_cache_evictions_total", {"reason": "size"})
    assert counter(metrics, "dynoserve_gateway_answer_cache_hits_total") == 5
    assert counter(metrics, "dynoserve_gateway_answer_cache_misses_total") == 1
    assert metrics.registry.get_sample_value("dynoserve_gateway_answer_cache_bytes") == 4 * one
    assert metrics.registry.get_sample_value("dynoserve_gateway_answer_cache_entries") == 4


def test_the_row_is_kept_whole_at_float32() -> None:
    cache = AnswerCache(1 << 20)
    scores = [0.1, 0.7, 0.2]
    cache.put(key(1), scores, ["a", "b", "c"])
    answer = cache.get(key(1))
    assert answer is not None
    assert answer.scores.tolist() == pytest.approx(scores, abs=1e-7)
    assert answer.classes == ("a", "b", "c")


def test_off_with_zero() -> None:
    metrics = Metrics()
    cache = AnswerCache(0, metrics)
    cache.put(key(1), row(), None)
    assert (cache.enabled, cache.get(key(1)), cache.bytes) == (False, None, 0)
    assert counter(metrics, "dynoserve_gateway_answer_cache_misses_total") == 0


def test_an_entry_larger_than_the_bound_is_not_kept() -> None:
    cache = AnswerCache(200)
    cache.put(key(1), row(1000), None)
    assert (cache.get(key(1)), cache.bytes) == (None, 0)


def test_class_names_are_kept_once_and_counted_once() -> None:
    names = [f"class number {i}" for i in range(1000)]
    cache = AnswerCache(10 << 20)
    cache.put(key(1), row(1000), list(names))
    after_one = cache.bytes
    cache.put(key(2), row(1000), list(names))
    first, second = cache.get(key(1)), cache.get(key(2))
    assert first is not None
    assert second is not None
    assert first.classes is second.classes
    assert cache.bytes - after_one < after_one / 5  # the second entry is its row, not the names
    cache.drop_version("m", 1)
    assert cache.bytes == 0


@pytest.mark.parametrize(
    ("classes", "names", "entries"),
    [(3, False, 3000), (3, False, 22000), (1000, False, 3000), (1000, True, 3000)],
)
def test_the_estimate_is_honest(classes: int, names: bool, entries: int) -> None:
    """What the cache counts is what Python allocated for it (tracemalloc), never less and at
    most 10 % more: the bound is a bound on memory. 22,000 entries: just after the table grew."""
    labels = [f"label-{i}" for i in range(classes)] if names else None
    rows = [row(classes, seed) for seed in range(50)]
    cache = AnswerCache(1 << 30)
    signature = "serving_default"  # the settings' string, shared by every key
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(entries):
            # Per request: the digest of the bytes and the model name parsed from the URL.
            model = "".join(["sha", "pes"])
            cache.put(
                (answercache.digest(n.to_bytes(4)), model, 1, signature), rows[n % 50], labels
            )
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= cache.bytes <= used * 1.1, (used, cache.bytes)


def test_a_version_not_seen_served_lately_answers_nothing_until_confirmed() -> None:
    clock = Clock()
    metrics = Metrics()
    cache = AnswerCache(1 << 20, metrics, clock)
    cache.put(key(1, version=1), row(), None)
    cache.put(key(2, version=2), row(), None)
    clock.now += answercache.LIVENESS_TTL_S + 1
    assert cache.needs_check("m", 1)
    assert cache.needs_check("m", 2)
    assert cache.get(key(1, version=1)) is None
    cache.served("m", [2])  # GetModelStatus: only version 2 is AVAILABLE
    assert not cache.needs_check("m", 2)
    assert not cache.needs_check("m", 1)
    assert cache.get(key(2, version=2)) is not None
    assert cache.get(key(1, version=1)) is None
    evictions = {"reason": "unloaded"}
    assert counter(metrics, "dynoserve_gateway_answer_cache_evictions_total", evictions) == 1
    cache.drop_version("m", 2)
    assert cache.bytes == 0
    assert counter(metrics, "dynoserve_gateway_answer_cache_evictions_total", evictions) == 2


def test_a_request_confirms_ahead_so_its_lookup_finds_the_version_live() -> None:
    clock = Clock()
    cache = AnswerCache(1 << 20, Metrics(), clock)
    cache.put(key(1), row(), None)
    clock.now += answercache.LIVENESS_TTL_S - answercache.CHECK_AHEAD_S / 2
    # Still live, but too close to the window's end for a request that looks up later.
    assert cache.needs_check("m", 1)
    cache.served("m", [1])
    clock.now += answercache.CHECK_AHEAD_S  # the request's fetch took this long
    assert not cache.needs_check("m", 1)
    assert cache.get(key(1)) is not None


def test_threads_keep_the_books_straight() -> None:
    cache = AnswerCache(30_000)
    names = ["a", "b", "c"]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                n = rng.randrange(300)
                if rng.random() < 0.5:
                    cache.put(key(n, version=n % 3), row(seed=n), names if n % 2 else None)
                elif rng.random() < 0.02:
                    cache.drop_version("m", rng.randrange(3))
                else:
                    cache.get(key(n, version=n % 3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = cache._entries
    shared = sum(s.size for s in cache._names.values())
    assert cache.bytes == sum(size for _, size in entries.values()) + shared
    assert cache.bytes <= cache.limit_bytes
    assert sum(cache._per_version.values()) == len(entries)


# --- in a real app against a real gRPC server (scripted fake) ---------------------------------

JPEG = image_bytes("JPEG", size=(32, 24), color="blue")
PNG = image_bytes("PNG", size=(20, 20), color="green")


class StatusFake(FakeGrpcModelServer):
    """The fake with the versions GetModelStatus reports AVAILABLE settable."""

    def __init__(self) -> None:
        super().__init__()
        self.available = [3]
        self.status_calls = 0

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        self.status_calls += 1
        response = super().GetModelStatus(request, context)
        del response.model_version_status[:]
        for version in self.available:
            response.model_version_status.add(version=version, state=30)
        return response


@pytest.fixture
def fake() -> Iterator[tuple[StatusFake, str]]:
    with serve_fake(StatusFake()) as running:
        yield running


def make_app(target: str, tmp_path: Path, **overrides: Any) -> tuple[Any, Metrics]:
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "/x/m" } }\n')
    settings = Settings(
        model_server=target,
        model_config_file=config,
        sync_status_file=tmp_path / "no-status.json",
        fetch_allow_private=True,
        grpc_max_attempts=1,
        grpc_deadline_s=2.0,
        **overrides,
    )
    metrics = Metrics()
    return create_app(settings, metrics=metrics).test_client(), metrics


def predict(client: Any, body: dict[str, Any]) -> tuple[int, str | None, dict[str, Any]]:
    answer = client.post("/v1/models/m:predict", json=body)
    return answer.status_code, answer.headers.get("Dynoserve-Cache"), answer.get_json()


def test_a_hit_needs_no_model_server(
    tmp_path: Path, image_server: ImageServer, fake: tuple[StatusFake, str]
) -> None:
    server, target = fake
    url = image_server.add_bytes("/cache/a.jpg", JPEG)
    client, metrics = make_app(target, tmp_path)
    status, cache, first = predict(client, {"image_url": url})
    assert (status, cache, len(server.predicted)) == (200, "miss", 1), first
    server.predict_gate = threading.Event()  # a Predict from now on would hang (then 504)
    status, cache, again = predict(client, {"image_url": url, "top_k": 2})
    assert (status, cache, len(server.predicted)) == (200, "hit", 1), again
    assert again["predictions"] == first["predictions"][:2]
    assert again["version"] == 3
    assert again["timings_ms"]["inference"] == 0
    assert counter(metrics, "dynoserve_gateway_admitted_requests_total") == 1
    server.predict_gate.set()


def test_a_hit_answers_with_the_model_server_gone(
    tmp_path: Path, image_server: ImageServer
) -> None:
    url = image_server.add_bytes("/cache/gone.png", PNG)
    with serve_fake(StatusFake()) as (_server, target):
        client, _ = make_app(target, tmp_path)
        assert predict(client, {"image_url": url})[:2] == (200, "miss")
    # The gRPC server is stopped: within the liveness window the version still answers.
    status, cache, body = predict(client, {"image_url": url})
    assert (status, cache) == (200, "hit"), body
    status, cache, body = predict(client, {"image_b64": _b64(JPEG)})
    assert (status, cache) == (503, None), body  # a miss needs the model server


def test_a_batch_sends_only_its_misses(
    tmp_path: Path, image_server: ImageServer, fake: tuple[StatusFake, str]
) -> None:
    server, target = fake
    old = image_server.add_bytes("/cache/old.jpg", JPEG)
    new = image_server.add_bytes("/cache/new.png", PNG)
    client, metrics = make_app(target, tmp_path)
    assert predict(client, {"image_url": old})[:2] == (200, "miss")
    images = [{"image_url": old}, {"image_url": new}, {"image_b64": _b64(JPEG)}]
    status, cache, body = predict(client, {"images": images})
    assert (status, cache) == (200, "partial"), body
    assert server.predicted[-1] == ("m", [1])  # only the new image went to Predict
    assert all("predictions" in item for item in body["results"])
    status, cache, _ = predict(client, {"images": images})
    assert (status, cache, len(server.predicted)) == (200, "hit", 2)
    assert counter(metrics, "dynoserve_gateway_answer_cache_hits_total") == 2 + 3
    assert counter(metrics, "dynoserve_gateway_answer_cache_misses_total") == 1 + 1


def test_a_hit_takes_no_admission_slot(
    tmp_path: Path, image_server: ImageServer, fake: tuple[StatusFake, str]
) -> None:
    """The only slot is held by a Predict that hangs; a cached image is answered meanwhile."""
    server, target = fake
    url = image_server.add_bytes("/cache/slot.jpg", JPEG)
    client, _ = make_app(target, tmp_path, max_in_flight=1, max_queue=4)
    assert predict(client, {"image_url": url})[:2] == (200, "miss")
    server.predict_gate = threading.Event()
    held = threading.Thread(target=predict, args=(client, {"image_b64": _b64(PNG)}))
    held.start()
    try:
        _wait(lambda: server.predicting == 1)
        started = time.monotonic()
        assert predict(client, {"image_url": url})[:2] == (200, "hit")
        assert time.monotonic() - started < 2
    finally:
        server.predict_gate.set()
        held.join(10)


def test_an_unloaded_version_loses_its_answers(
    tmp_path: Path, image_server: ImageServer, fake: tuple[StatusFake, str]
) -> None:
    server, target = fake
    url = image_server.add_bytes("/cache/unloaded.jpg", JPEG)
    client, metrics = make_app(target, tmp_path)
    assert predict(client, {"image_url": url})[:2] == (200, "miss")
    # Predict says NOT_FOUND for version 3: the gateway learns it was unloaded.
    server.unloaded_versions = {3}
    status, _, _ = predict(client, {"image_b64": _b64(PNG)})
    assert status == 503
    evicted = {"reason": "unloaded"}
    assert counter(metrics, "dynoserve_gateway_answer_cache_evictions_total", evicted) == 1
    status, cache, _ = predict(client, {"image_url": url})
    assert (status, cache) == (503, None)


def test_after_the_liveness_window_the_model_server_is_asked(
    tmp_path: Path,
    image_server: ImageServer,
    fake: tuple[StatusFake, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, target = fake
    monkeypatch.setattr(answercache, "LIVENESS_TTL_S", 0.3)
    url = image_server.add_bytes("/cache/window.jpg", JPEG)
    client, _ = make_app(target, tmp_path)
    assert predict(client, {"image_url": url})[:2] == (200, "miss")
    time.sleep(0.4)  # the window itself is what is tested
    calls = server.status_calls
    assert predict(client, {"image_url": url})[:2] == (200, "hit")
    assert server.status_calls == calls + 1  # confirmed with GetModelStatus, no Predict
    assert len(server.predicted) == 1
    time.sleep(0.4)
    server.available = [4]  # version 3 is gone (metadata still says 3: resolver's cache)
    status, cache, _ = predict(client, {"image_url": url})
    assert (cache, len(server.predicted)) == ("miss", 2), status


def test_the_header_is_absent_with_the_cache_off(
    tmp_path: Path, image_server: ImageServer, fake: tuple[StatusFake, str]
) -> None:
    server, target = fake
    url = image_server.add_bytes("/cache/off.jpg", JPEG)
    client, metrics = make_app(target, tmp_path, answer_cache_bytes=0)
    for _ in range(2):
        assert predict(client, {"image_url": url})[:2] == (200, None)
    assert len(server.predicted) == 2
    text = generate_latest(metrics.registry).decode()
    assert "dynoserve_gateway_answer_cache_hits_total 0.0" in text


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _wait(condition: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_openapi_documents_the_header_on_every_predict_answer() -> None:
    from gateway.openapi import openapi_spec

    spec = openapi_spec(Settings())
    predicts = [p for p in spec["paths"] if p.endswith(":predict")]
    assert predicts
    for path in predicts:
        for operation in spec["paths"][path].values():
            header = operation["responses"]["200"]["headers"][answercache.CACHE_HEADER]
            assert set(header["schema"]["enum"]) == {"hit", "miss", "partial"}
