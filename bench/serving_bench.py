"""Model-server benchmark: the raw SavedModel signature against gRPC Predict on the local server.

One run measures, on the benchmark model (MobileNet v1 224, 40 classes, serving_default with
JPEG decoding in the graph): the signature called in-process at batch 1 and batch 32, then gRPC
Predict with 1, 8, 32 and 64 concurrent callers each sending one JPEG, against the local server
without and with server-side batching. Results go to bench/results/serving.json.
The client threads share the machine's cores with the server; the numbers say so.
Run: python -m bench.serving_bench [--model-dir D] [--seconds S]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serving.json"
MODEL = "mobilenet"
CALLERS = (1, 8, 32, 64)
BATCHING = (
    "max_batch_size { value: 32 }\n"
    "batch_timeout_micros { value: 0 }\n"
    "num_batch_threads { value: 1 }\n"
    "max_enqueued_batches { value: 64 }\n"
)


def sample_jpeg(size: int = 224) -> bytes:
    """A photo-like 224x224 JPEG (smooth gradients plus noise), about what a client sends."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x, y, (x + y) // 2], axis=-1) * (255 / size)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def ensure_model(model_dir: Path) -> Path:
    """The benchmark model's base path, exported by export.benchmodel if missing."""
    base = model_dir / MODEL
    if not (base / "1" / "saved_model.pb").exists():
        subprocess.run(
            [sys.executable, "-m", "export.benchmodel", "--export-dir", str(model_dir)],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
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
        return percentiles(_timed_calls(lambda: self.signature(images=self.one), seconds))

    def batch32_images_per_s(self, seconds: float) -> float:
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            self.signature(images=self.batch)
            calls += 1
        return round(32 * calls / (time.perf_counter() - started), 1)


def _timed_calls(call: Callable[[], Any], seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    base: Path, extra: Sequence[str], log: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The local server (gRPC, REST with metrics) once its gRPC port accepts connections."""
    port, rest = free_port(), free_port()
    monitoring = log.with_suffix(".monitoring")
    monitoring.write_text("prometheus_config { enable: true }")
    argv = [
        sys.executable,
        "-m",
        "serving.local",
        f"--port={port}",
        f"--rest_api_port={rest}",
        f"--monitoring_config_file={monitoring}",
        f"--model_name={MODEL}",
        f"--model_base_path={base}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early; see {log}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port, rest
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start; see {log}")


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
            results[index] = _timed_calls(lambda: stub.Predict(request, timeout=60), seconds)
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
    import re
    import urllib.request

    url = f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    found = {}
    for name in ("request_latency", "runtime_latency"):
        total = count = 0.0
        for kind, value in re.findall(
            rf":tensorflow:serving:{name}_(sum|count)\{{[^}}]*\}} (\S+)", page
        ):
            if kind == "sum":
                total += float(value)
            else:
                count += float(value)
        found[name] = (total, count)
    return found


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
    base: Path, image: bytes, extra: Sequence[str], seconds: float, log: Path, raw: RawSignature
) -> dict[str, Any]:
    """Each caller count in turn; raw batch 1 / 32 re-measured around the runs they judge."""
    process, port, rest = start_server(base, extra, log)
    results: dict[str, Any] = {}
    try:
        for callers in CALLERS:
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
        process.terminate()
        process.wait(60)
    return results


def verdict(plain: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    """The two targets, each judged against raw numbers measured right around its own run."""
    raw1 = statistics.mean(r["p50_ms"] for r in plain["1"]["raw_batch1_around"])
    raw32 = statistics.mean(batched["32"]["raw_batch32_around"])
    one_caller = plain["1"]["p50_ms"]
    return {
        "raw_batch1_p50_ms": round(raw1, 2),
        "one_caller_p50_ms": one_caller,
        "one_caller_budget_ms": round(raw1 + 1.5, 2),
        "one_caller_met": one_caller <= raw1 + 1.5,
        "server_overhead_ms": plain["1"]["server_overhead_ms"],
        "raw_batch32_images_per_s": round(raw32, 1),
        "batched_32_callers_per_s": batched["32"]["requests_per_s"],
        "batched_32_floor_per_s": round(0.9 * raw32, 1),
        "batched_32_met": batched["32"]["requests_per_s"] >= 0.9 * raw32,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_bench", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "bench-models")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base = ensure_model(args.model_dir)
    image = sample_jpeg()
    raw = RawSignature(base, image)
    with tempfile.TemporaryDirectory() as tmp:
        batching_file = Path(tmp) / "batching.config"
        batching_file.write_text(BATCHING)
        logs = Path(tmp)
        plain = run_server_series(base, image, [], args.seconds, logs / "plain.log", raw)
        print("gRPC, no batching:", json.dumps(plain))
        batched_args = ["--enable_batching", f"--batching_parameters_file={batching_file}"]
        batched = run_server_series(base, image, batched_args, args.seconds, logs / "b.log", raw)
        print("gRPC, batching:", json.dumps(batched))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "client threads run on the same cores as the server",
        "image_bytes": len(image),
        "batching_parameters": BATCHING,
        "load_average_at_end": os.getloadavg(),
        "grpc_no_batching": plain,
        "grpc_batching": batched,
        "targets": verdict(plain, batched),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print("targets:", json.dumps(result["targets"]))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
