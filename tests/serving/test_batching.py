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
from tests.serving.helpers import (
    GREEN,
    RED,
    Server,
    copy_versions,
    jpeg,
    predict_request,
    running_server,
)
from tests.support import REPO_ROOT, wait_for


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


def _splitting(
    max_execution_batch_size: int | None = None, allowed_batch_sizes: tuple[int, ...] = ()
) -> BatchingOptions:
    return BatchingOptions(
        max_batch_size=16,
        enable_large_batch_splitting=True,
        max_execution_batch_size=max_execution_batch_size,
        allowed_batch_sizes=allowed_batch_sizes,
    )


def test_options_are_validated_like_tf_serving() -> None:
    with pytest.raises(ValueError, match="monotonically increasing"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 2, 8)).validate()
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4)).validate()
    assert BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8)).padded_size(3) == 4
    with pytest.raises(ValueError, match="at most max_batch_size"):
        _splitting(max_execution_batch_size=32).validate()
    with pytest.raises(ValueError, match="must be equal to max_execution_batch_size"):
        _splitting(max_execution_batch_size=8, allowed_batch_sizes=(4,)).validate()
    with pytest.raises(ValueError, match="less than or equal to max_batch_size"):
        _splitting(max_execution_batch_size=8, allowed_batch_sizes=(8, 32)).validate()
    _splitting(max_execution_batch_size=8, allowed_batch_sizes=(4, 8)).validate()
    assert _splitting().execution_batch_size == 16  # GetQueueOptions: max_batch_size if unset
    off = BatchingOptions(max_batch_size=16, max_execution_batch_size=8)
    assert off.execution_batch_size == 16  # read only when splitting is on


def _rows(start: int, count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


def test_large_batch_splitting_runs_a_request_in_pieces_and_answers_it_whole() -> None:
    """A 20-row request queued behind a 5-row one runs in batches of at most 8: 3 of its rows
    fill the 5-row batch, the other 17 go on in the next batches (8, 8, 1), and
    it gets its 20 rows back in order (as the queue's split_input_task_func does)."""
    gate = threading.Event()
    recorder = _Recorder(gate=gate)
    scheduler = _scheduler(
        recorder,
        max_batch_size=32,
        enable_large_batch_splitting=True,
        max_execution_batch_size=8,
        num_batch_threads=1,
    )
    try:
        with ThreadPoolExecutor(4) as pool:
            blocker = pool.submit(scheduler.submit, _rows(100, 1), 10)
            assert recorder.running.wait(10)  # the lone first request holds the batch turn
            small = pool.submit(scheduler.submit, _rows(200, 5), 10)
            wait_for(lambda: scheduler.queued == 5, timeout=10)
            large = pool.submit(scheduler.submit, _rows(0, 20), 10)
            wait_for(lambda: scheduler.queued == 25, timeout=10)
            gate.set()
            answers = [f.result()["y"][:, 0].tolist() for f in (blocker, small, large)]
    finally:
        scheduler.close()
    assert answers[0] == [200.0]
    assert answers[1] == [2.0 * v for v in range(200, 205)]
    assert answers[2] == [2.0 * v for v in range(20)]
    assert [size for size, _ in recorder.batches] == [1, 8, 8, 8, 1]
    assert max(padded for _, padded in recorder.batches) <= 8


def test_a_split_request_fails_whole_when_a_piece_fails_and_the_others_are_answered() -> None:
    """One bad row among a split request's pieces fails that request (its first error), not
    the request that shared a batch with it."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise InvalidArgument("negative input")
        return {"y": inputs["x"] * 2}

    scheduler = BatchScheduler(
        BatchingOptions(
            max_batch_size=16,
            enable_large_batch_splitting=True,
            max_execution_batch_size=4,
            num_batch_threads=1,
        ),
        run,
        lambda size, padded: None,
        name="test",
    )
    bad = _rows(0, 10)
    bad["x"][7, 0] = -1
    try:
        with pytest.raises(InvalidArgument, match="negative input"):
            scheduler.submit(bad, 10)
        assert scheduler.submit(_rows(0, 10), 10)["y"][:, 0].tolist() == [
            2.0 * v for v in range(10)
        ]
    finally:
        scheduler.close()


def test_without_splitting_a_request_larger_than_max_batch_size_is_refused() -> None:
    recorder = _Recorder()
    scheduler = _scheduler(recorder, max_batch_size=8, max_execution_batch_size=4)
    try:
        with pytest.raises(InvalidArgument, match="Task size 9 is larger than maximum input"):
            scheduler.submit(_rows(0, 9), 10)
        assert scheduler.submit(_rows(0, 8), 10)["y"].shape == (8, 1)
    finally:
        scheduler.close()
    assert recorder.batches == [(8, 8)]


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
def test_the_shipped_batching_file_splits_a_large_request_into_batches_of_8(
    tmp_path: Path, tiny_repo: Path
) -> None:
    """serving/batching.config as shipped: a 12-image Predict is accepted (max_batch_size 16)
    and runs as batches of at most 8 (max_execution_batch_size), each image answered as it is
    alone."""
    import tensorflow as tf

    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    shipped = REPO_ROOT / "serving" / "batching.config"
    args = [
        "--model_name=tiny",
        f"--model_base_path={base}",
        f"--monitoring_config_file={monitoring}",
        "--enable_batching",
        f"--batching_parameters_file={shipped}",
    ]
    images = [jpeg(RED if i % 3 else GREEN) for i in range(12)]
    with running_server(tmp_path / "server.log", args) as server:
        alone = [
            tf.make_ndarray(
                server.predict.Predict(predict_request("tiny", image), timeout=60).outputs[
                    "probabilities"
                ]
            )[0]
            for image in images[:2]
        ]
        before = _batch_metric(server)
        request = predict_request("tiny", images[0])
        request.inputs["images"].tensor_shape.dim[0].size = 12
        request.inputs["images"].string_val[:] = images
        response = server.predict.Predict(request, timeout=60)
        count, total = (a - b for a, b in zip(_batch_metric(server), before, strict=True))
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape[0] == 12
    for i, row in enumerate(probabilities):
        np.testing.assert_allclose(row, alone[0 if i % 3 == 0 else 1], rtol=1e-5, atol=1e-6)
    assert (count, total) == (2, 12)  # 8 + 4


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
