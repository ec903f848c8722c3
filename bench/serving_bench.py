"""Model-server benchmark, the tool behind serving/batching.config: gRPC Predict on the local
server against the raw SavedModel signature, without batching and with each batching file given.

On the benchmark model (MobileNet v1 224, 40 classes, JPEG decoded in the graph) with a
640x480 photo-like JPEG (bench/images.py): the signature in-process at batch 1 and 32, then
gRPC Predict with 1, 8, 32 and 64 concurrent callers (threads here, one JPEG per call).
The client threads share the machine's cores with the server; the numbers say so.
Run: python -m bench.serving_bench [--seconds S] [--batching-file F ...] [--callers 1,8,32]
Results: bench/results/serving.json (`make bench` is the end-to-end benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import walltime
from bench.images import encode, photo
from bench.limit import timed
from devtools.net import free_port, port_open
from devtools.processes import REPO_ROOT, VENV_PYTHON, ManagedProcess, python_env

RESULTS = REPO_ROOT / "bench" / "results" / "serving.json"
MODEL = "mobilenet"
CALLERS = (1, 8, 32, 64)
SHIPPED_BATCHING = REPO_ROOT / "serving" / "batching.config"


def sample_jpeg() -> bytes:
    """One of `make bench`'s photo-like 640x480 JPEGs (~145 KB)."""
    return encode(photo(0))


def ensure_model(model_dir: Path) -> Path:
    """The benchmark model's base path, exported by export.benchmodel if missing."""
    base = model_dir / MODEL
    if not (base / "1" / "saved_model.pb").exists():
        argv = [str(VENV_PYTHON), "-m", "export.benchmodel", "--export-dir", str(model_dir)]
        subprocess.run(argv, check=True, env=python_env())
    return base


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "n": len(ordered)}


class RawSignature:
    """The serving_default signature called directly (loaded SavedModel, no server)."""

    def __init__(self, base: Path, image: bytes) -> None:
        import tensorflow as tf

        self.signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
        self.one = tf.constant([image])
        self.batch = tf.constant([image] * 32)
        for _ in range(5):
            self.signature(images=self.one)
            self.signature(images=self.batch)

    def batch1(self, seconds: float) -> dict[str, Any]:
        return percentiles(timed(lambda: self.signature(images=self.one), seconds))

    def batch32_images_per_s(self, seconds: float) -> float:
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            self.signature(images=self.batch)
            calls += 1
        return round(32 * calls / (time.perf_counter() - started), 1)


def start_server(base: Path, extra: Sequence[str], log: Path) -> tuple[ManagedProcess, int, int]:
    """The local server (gRPC, REST with metrics) once its gRPC port accepts connections."""
    port, rest = free_port(), free_port()
    monitoring = log.with_suffix(".monitoring")
    monitoring.write_text("prometheus_config { enable: true }")
    argv = [str(VENV_PYTHON), "-m", "serving.local", f"--port={port}", f"--rest_api_port={rest}"]
    argv += [f"--monitoring_config_file={monitoring}", f"--model_name={MODEL}"]
    argv += [f"--model_base_path={base}", *extra]
    process = ManagedProcess(argv, log, env=python_env())
    process.start_ready(lambda: port_open(port), timeout=300)
    return process, port, rest


def load(port: int, image: bytes, callers: int, seconds: float) -> dict[str, Any]:
    """`callers` threads, each sending one-JPEG Predict calls back to back for `seconds`."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["images"].dtype = 7  # DT_STRING
    request.inputs["images"].tensor_shape.dim.add().size = 1
    request.inputs["images"].string_val.append(image)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for _ in range(3):
        stub.Predict(request, timeout=60)
    results: list[list[float]] = [[] for _ in range(callers)]
    errors: list[str] = []
    start = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start.wait()
        try:
            results[index] = timed(lambda: stub.Predict(request, timeout=60), seconds)
        except grpc.RpcError as exc:
            errors.append(str(exc.code()))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    channel.close()
    samples = [ms for per_caller in results for ms in per_caller]
    return {
        **percentiles(samples),
        "requests_per_s": round(len(samples) / elapsed, 1),
        "errors": len(errors),
    }


def server_histograms(rest: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's request and runtime latency histograms, in microseconds."""
    page = walltime.page(f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics")
    return {
        name: walltime.sums(page, f":tensorflow:serving:{name}", "")
        for name in ("request_latency", "runtime_latency")
    }


def server_means_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean server-side request time, model-run time and their difference, between snapshots."""

    def mean(name: str) -> float:
        total = after[name][0] - before[name][0]
        count = after[name][1] - before[name][1]
        return total / count / 1000 if count else 0.0

    request, runtime = mean("request_latency"), mean("runtime_latency")
    return {
        "server_request_ms": round(request, 3),
        "server_model_run_ms": round(runtime, 3),
        "server_overhead_ms": round(request - runtime, 3),
    }


def run_server_series(
    base: Path,
    image: bytes,
    extra: Sequence[str],
    seconds: float,
    log: Path,
    raw: RawSignature,
    callers_list: Sequence[int] = CALLERS,
) -> dict[str, Any]:
    """Each caller count in turn; raw batch 1 / 32 re-measured around the runs they judge."""
    process, port, rest = start_server(base, extra, log)
    results: dict[str, Any] = {}
    try:
        for callers in callers_list:
            raw_before = raw.batch1(seconds / 2) if callers == 1 else None
            raw32_before = raw.batch32_images_per_s(seconds / 2) if callers == 32 else None
            snapshot = server_histograms(rest)
            entry = load(port, image, callers, seconds)
            if callers == 1:
                entry.update(server_means_ms(snapshot, server_histograms(rest)))
                entry["raw_batch1_around"] = [raw_before, raw.batch1(seconds / 2)]
            if callers == 32:
                entry["raw_batch32_around"] = [raw32_before, raw.batch32_images_per_s(seconds / 2)]
            results[str(callers)] = entry
    finally:
        process.stop(60)
    return results


def verdict(plain: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    """The two targets, each judged against raw numbers measured right around its own run."""
    raw1 = statistics.mean(r["p50_ms"] for r in plain["1"]["raw_batch1_around"])
    raw32 = statistics.mean(batched["32"]["raw_batch32_around"])
    one_caller = plain["1"]["p50_ms"]
    return {
        "raw_batch1_p50_ms": round(raw1, 2),
        "one_caller_p50_ms": one_caller,
        "server_overhead_ms": plain["1"]["server_overhead_ms"],
        "raw_batch32_images_per_s": round(raw32, 1),
        "batched_32_callers_per_s": batched["32"]["requests_per_s"],
        "batched_32_vs_raw_batch32": round(batched["32"]["requests_per_s"] / raw32, 2),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "var" / "bench-models")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument(
        "--batching-file",
        type=Path,
        action="append",
        help="BatchingParameters to measure (repeat to compare; default serving/batching.config)",
    )
    parser.add_argument(
        "--callers", default="1,8,32,64", help="comma-separated; must include 1, 32"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    callers = [int(c) for c in args.callers.split(",")]
    base = ensure_model(args.model_dir)
    image = sample_jpeg()
    raw = RawSignature(base, image)
    logs = REPO_ROOT / "var" / "bench" / "serving"
    logs.mkdir(parents=True, exist_ok=True)
    plain = run_server_series(base, image, [], args.seconds, logs / "plain.log", raw, callers)
    print("gRPC, no batching:", json.dumps(plain))
    batched: dict[str, Any] = {}
    for index, path in enumerate(args.batching_file or [SHIPPED_BATCHING]):
        extra = ["--enable_batching", f"--batching_parameters_file={path.resolve()}"]
        log = logs / f"batching-{index}.log"
        series = run_server_series(base, image, extra, args.seconds, log, raw, callers)
        batched[str(path)] = {"parameters": path.read_text(), "series": series}
        print(f"gRPC, batching {path}:", json.dumps(series))
    first = next(iter(batched.values()))["series"]
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "client threads run on the same cores as the server",
        "image_bytes": len(image),
        "load_average_at_end": os.getloadavg(),
        "grpc_no_batching": plain,
        "grpc_batching": batched,
        "targets": verdict(plain, first),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print("summary:", json.dumps(result["targets"]))
    print(f"wrote {args.output}; logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
