"""Server-side batching: the scheduler alone (fast), then concurrent calls on a real server."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.local.batching import BatchingOptions, BatchScheduler
from serving.local.errors import DeadlineExceeded, InvalidArgument, Unavailable
from tests.serving.helpers import RED, Server, copy_versions, jpeg, predict_request, running_server
from tests.support import wait_for


class _Recorder:
    """A batch function that doubles its input and remembers each batch's sizes; with a gate,
    each batch waits for it (`running` says a batch thread has a batch in hand)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.running = threading.Event()
        self.batches: list[tuple[int, int]] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.running.set()
        if self.gate is not None:
            self.gate.wait(10)
        return {"y": inputs["x"] * 2}

    def observe(self, size: int, padded: int) -> None:
        self.batches.append((size, padded))


def _scheduler(recorder: _Recorder, **options: object) -> BatchScheduler:
    return BatchScheduler(
        BatchingOptions(**options),  # type: ignore[arg-type]
        recorder.run,
        recorder.observe,
        name="test",
    )


def test_concurrent_tasks_share_a_padded_batch_and_get_their_own_rows() -> None:
    recorder = _Recorder()
    scheduler = _scheduler(
        recorder,
        max_batch_size=8,
        batch_timeout_micros=200_000,
        num_batch_threads=1,
        allowed_batch_sizes=(4, 8),
    )
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(scheduler.submit, {"x": np.array([[i]], np.float32)}, 10)
                for i in range(6)
            ]
            results = [f.result()["y"] for f in futures]
    finally:
        scheduler.close()
    assert [int(r[0][0]) for r in results] == [0, 2, 4, 6, 8, 10]
    assert sum(size for size, _ in recorder.batches) == 6
    assert len(recorder.batches) < 6, "tasks that arrive together must share batches"
    assert all(padded in (4, 8) for _, padded in recorder.batches)


def test_queue_limits_and_task_checks() -> None:
    gate = threading.Event()
    recorder = _Recorder(gate=gate)
    scheduler = _scheduler(recorder, max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    try:
        with pytest.raises(InvalidArgument, match="larger than maximum input batch size 2"):
            scheduler.submit({"x": np.zeros((3, 1))}, 1)
        with pytest.raises(InvalidArgument, match="at least one dimension"):
            scheduler.submit({"x": np.zeros(())}, 1)
        with ThreadPoolExecutor(4) as pool:
            blocking = pool.submit(scheduler.submit, {"x": np.zeros((2, 1))}, 10)
            # The batch thread is then busy with it, behind the closed gate.
            assert recorder.running.wait(10), "the batch thread never took the first task"
            queued = pool.submit(scheduler.submit, {"x": np.zeros((2, 1))}, 10)
            wait_for(lambda: scheduler.queued == 2, timeout=10, what="the second task queued")
            with pytest.raises(Unavailable, match="queue to which this task was submitted is full"):
                scheduler.submit({"x": np.zeros((1, 1))}, 1)
            gate.set()
            assert blocking.result().keys() == queued.result().keys() == {"y"}
    finally:
        gate.set()
        scheduler.close()


def test_deadline_while_queued() -> None:
    gate = threading.Event()
    recorder = _Recorder(gate=gate)
    scheduler = _scheduler(recorder, max_batch_size=1, num_batch_threads=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(scheduler.submit, {"x": np.zeros((1, 1))}, 10)
            assert recorder.running.wait(10), "the batch thread never took the first task"
            with pytest.raises(DeadlineExceeded):
                scheduler.submit({"x": np.zeros((1, 1))}, 0.2)
            gate.set()
            first.result()
    finally:
        gate.set()
        scheduler.close()


def test_a_lone_task_runs_on_its_callers_thread_and_batches_stay_within_the_thread_count() -> None:
    """Batch timeout 0 and a free turn: the caller runs its batch itself (no hand-off). Callers
    and batch threads together never run more batches at once than num_batch_threads."""
    gate = threading.Event()
    runners: list[str] = []
    at_once = [0, 0]  # running now, most ever
    lock = threading.Lock()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with lock:
            runners.append(threading.current_thread().name)
            at_once[0] += 1
            at_once[1] = max(at_once)
        gate.wait(10)
        with lock:
            at_once[0] -= 1
        return {"y": inputs["x"] * 2}

    scheduler = BatchScheduler(
        BatchingOptions(max_batch_size=4, num_batch_threads=2), run, lambda *_: None, "test"
    )
    try:
        gate.set()
        out = scheduler.submit({"x": np.ones((1, 1))}, 10)
        assert out["y"].tolist() == [[2.0]]
        assert runners == [threading.current_thread().name]
        gate.clear()
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(scheduler.submit, {"x": np.ones((1, 1))}, 10) for _ in range(8)]
            wait_for(lambda: at_once[0] == 2, timeout=10, what="two batches running")
            time.sleep(0.2)  # a third would start now if the bound did not hold
            gate.set()
            assert all(f.result()["y"].tolist() == [[2.0]] for f in futures)
        assert at_once[1] == 2
    finally:
        gate.set()
        scheduler.close()


def test_options_are_validated_like_tf_serving() -> None:
    with pytest.raises(ValueError, match="monotonically increasing"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 2, 8)).validate()
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4)).validate()
    assert BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8)).padded_size(3) == 4


def _batch_metric(server: Server) -> tuple[float, float]:
    """(count, sum) of the processed_batch_size histogram."""
    _, page = server.rest("GET", "/monitoring/prometheus/metrics")
    prefix = ":tensorflow:serving:batching_session:processed_batch_size"
    count = re.search(prefix + r"_count\{[^}]*\} ([0-9.e+]+)", page)
    total = re.search(prefix + r"_sum\{[^}]*\} ([0-9.e+]+)", page)
    assert count, page[:2000]
    assert total, page[:2000]
    return float(count.group(1)), float(total.group(1))


def _throughput(server: Server, callers: int, per_caller: int) -> float:
    image = jpeg(RED)

    def work(_: int) -> None:
        stub = server.predict
        for _ in range(per_caller):
            stub.Predict(predict_request("tiny", image), timeout=60)

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(work, range(callers)))
    return callers * per_caller / (time.perf_counter() - started)


@pytest.mark.slow
def test_concurrent_requests_run_as_shared_batches(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000 }\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
    )
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    common = [
        "--model_name=tiny",
        f"--model_base_path={base}",
        f"--monitoring_config_file={monitoring}",
    ]
    batched_args = [*common, "--enable_batching", f"--batching_parameters_file={batching}"]
    with running_server(tmp_path / "batched.log", batched_args) as server:
        before = _batch_metric(server)
        batched = _throughput(server, callers=16, per_caller=8)
        count, total = (a - b for a, b in zip(_batch_metric(server), before, strict=True))
    with running_server(tmp_path / "plain.log", common) as server:
        plain = _throughput(server, callers=16, per_caller=8)
    print(f"tiny model, 16 callers: batching {batched:.0f} req/s, no batching {plain:.0f} req/s")
    print(f"batches: {count:.0f} for 128 requests, mean padded size {total / count:.1f}")
    assert count < 128 / 2, "concurrent requests must share batches"
    assert total / count >= 2


@pytest.mark.slow
def test_full_batch_queue_is_unavailable(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 1 }\nmax_enqueued_batches { value: 1 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    args = [
        "--model_name=tiny",
        f"--model_base_path={base}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
    ]
    with running_server(tmp_path / "server.log", args) as server:
        image = jpeg(RED)
        start = threading.Barrier(32)

        def call(_: int) -> tuple[grpc.StatusCode, str]:
            start.wait()
            try:
                server.predict.Predict(predict_request("tiny", image), timeout=60)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
            return grpc.StatusCode.OK, ""

        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(call, range(32)))
    codes = [code for code, _ in outcomes]
    full = "The batch scheduling queue to which this task was submitted is full"
    assert {details for code, details in outcomes if code != grpc.StatusCode.OK} == {full}
    assert grpc.StatusCode.OK in codes
    assert grpc.StatusCode.UNAVAILABLE in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
