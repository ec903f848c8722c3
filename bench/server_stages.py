"""The local server's Predict path stage by stage, in one process and without gRPC: CPU
microseconds per call of each stage, for docs/performance.md.

The tiny model (bench.overhead.tiny_model) and a 16x16 JPEG keep TensorFlow's own work small,
so the server's stages are not lost in the model's. The server is built as `python -m
serving.local` builds it (the shipped batching file; gRPC port open but unused); each stage
runs `--calls` times back to back on one thread, timed with that thread's CPU clock except
the batching hand-off and the signature, which run on other threads too (process CPU).
Stages: parse the request bytes, manager lookup + checks (predict.prepare), batching + the
signature (LoadedVersion.run), the signature alone (as bench.limit calls it), the response
(predict.make_response) and its bytes, the whole DataPlane.predict.

Run: .venv/bin/python -m bench.server_stages [--calls 2000]   (JSON on stdout)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.overhead import TINY, WORK, tiny_jpeg, tiny_model
from devtools.net import free_port
from devtools.processes import REPO_ROOT


def per_call_us(call: Callable[[], object], calls: int, clock: Callable[[], float]) -> float:
    for _ in range(20):
        call()
    started = clock()
    for _ in range(calls):
        call()
    return round(1e6 * (clock() - started) / calls, 1)


def build_plane(base: str) -> Any:
    from serving import flags
    from serving.local.server import ModelServer
    from serving.settings import Settings

    argv = [f"--model_name={TINY}", f"--model_base_path={base}", f"--port={free_port()}"]
    argv += ["--rest_api_port=0", "--enable_batching=true"]
    argv += [f"--batching_parameters_file={REPO_ROOT / 'serving' / 'batching.config'}"]
    server = ModelServer(flags.parse_or_exit(argv, "bench"), Settings.from_env())
    server.start()
    return server


def measure(calls: int) -> dict[str, Any]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.local.predict import make_response, prepare

    base = tiny_model()
    WORK.mkdir(parents=True, exist_ok=True)
    image = tiny_jpeg(WORK).read_bytes()
    server = build_plane(str(base))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TINY
    request.inputs["images"].dtype = 7  # DT_STRING
    request.inputs["images"].tensor_shape.dim.add().size = 1
    request.inputs["images"].string_val.append(image)
    wire = request.SerializeToString()
    plane, manager = server.plane, server.manager
    thread_cpu, process_cpu = time.thread_time, time.process_time
    with manager.serving(request.model_spec) as loaded:
        call = prepare(loaded.servable, request)
        outputs = loaded.run(call, 10)
        signature = loaded.servable._functions[call.signature_name]
        constant = tf.constant([image])

        def lookup_and_checks() -> None:
            with manager.serving(request.model_spec) as held:
                prepare(held.servable, request)

        stages = {
            "parse request bytes": (
                lambda: predict_pb2.PredictRequest.FromString(wire),
                thread_cpu,
            ),
            "manager lookup + checks + to_numpy": (lookup_and_checks, thread_cpu),
            "batching + signature (LoadedVersion.run)": (lambda: loaded.run(call, 10), process_cpu),
            "signature alone (as bench.limit)": (lambda: signature(images=constant), process_cpu),
            "response (make_response + bytes)": (
                lambda: make_response(TINY, 1, call.signature_name, outputs).SerializeToString(),
                thread_cpu,
            ),
            "DataPlane.predict (all of it)": (
                lambda: plane.predict(request, 10, "GRPC"),
                process_cpu,
            ),
        }
        found = {name: per_call_us(fn, calls, clock) for name, (fn, clock) in stages.items()}
    server.stop()
    return {"calls": calls, "load_average": round(os.getloadavg()[0], 2), "cpu_us": found}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_stages", description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.calls), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
