"""The gateway's work for one request, stage by stage, in one process: CPU microseconds per
call of each stage the request path runs, for docs/performance.md.

Stages: fetch a benchmark photo (640x480 JPEG, ~145 KB) from nginx with the SSRF-safe fetcher
(address checks, pinned connection, watchdog), on a kept-alive connection and on a new one per
fetch (DYNOSERVE_FETCH_KEEPALIVE=0; bench.fetch_keepalive compares the two over HTTPS too);
vet it (images.check_image: sniff, header, pixel cap, decode at 1/8 scale to prove the body is
whole); the answer cache's SHA-256; the
input tensor and the request's bytes (client.string_tensor, encode_predict_request); the gRPC
Predict call's client side (the tiny model on a local server: this process's CPU per call,
gRPC's own threads included); the answer decoded and ranked (client.decode_outputs,
topk.rank); the JSON answer. What the stack's gateway spends per request beyond their sum is
waitress, Flask, the hooks (request id, memory budget, admission, metrics, access log).

Run (TensorFlow is never imported here; the local server runs as its own process):
  .venv/bin/python -m bench.gateway_stages [--calls 300]   (JSON on stdout)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from bench.images import write_photos
from bench.nginx import start_nginx
from bench.overhead import TINY, WORK, tiny_model
from devtools.net import free_port, port_open
from devtools.processes import REPO_ROOT, VENV_PYTHON, ManagedProcess, python_env


def per_call_us(call: Callable[[], object], calls: int, clock: Callable[[], float]) -> float:
    for _ in range(10):
        call()
    started = clock()
    for _ in range(calls):
        call()
    return round(1e6 * (clock() - started) / calls, 1)


def process_cpu() -> float:
    """This process's CPU seconds, every thread (gRPC's own included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tiny_server(stack: ExitStack) -> str:
    port = free_port()
    argv = [str(VENV_PYTHON), "-m", "serving.local", f"--port={port}", f"--model_name={TINY}"]
    argv += [f"--model_base_path={tiny_model()}", "--enable_batching=true"]
    argv += [f"--batching_parameters_file={REPO_ROOT / 'serving' / 'batching.config'}"]
    server = ManagedProcess(argv, WORK / "stages-server.log", env=python_env())
    server.start_ready(lambda: port_open(port), timeout=300)
    stack.callback(server.stop)
    return f"127.0.0.1:{port}"


def measure(calls: int) -> dict[str, Any]:
    from flask import Flask
    from flask import json as flask_json

    from gateway.client import ModelServerClient, encode_predict_request, model_spec, string_tensor
    from gateway.fetch import FetchPolicy, ImageFetcher
    from gateway.images import check_image

    WORK.mkdir(parents=True, exist_ok=True)
    photo = write_photos(REPO_ROOT / "var" / "bench" / "photos", 1)[0]
    data, small = photo.read_bytes(), _tiny_jpeg()
    policy = FetchPolicy(10_000_000, 5.0, 10.0, 20.0, 3, (), allow_private=True)
    thread = time.thread_time
    with ExitStack() as stack:
        nginx, image_base = start_nginx(photo.parent, WORK / "stages-nginx")
        stack.callback(nginx.stop)
        fetcher = ImageFetcher(policy)  # keeps its connection to nginx alive between fetches
        stack.callback(fetcher.close)
        fresh = ImageFetcher(replace(policy, keepalive=0))
        stack.callback(fresh.close)
        client = ModelServerClient(tiny_server(stack), 30, 1)
        stack.callback(client.close)
        spec = model_spec(TINY, None, signature_name="serving_default")

        def predict_small() -> Any:
            wire = encode_predict_request(spec, {"images": string_tensor([small])})
            return client._predict_bytes(wire, timeout=30)

        response = predict_small()
        url = f"{image_base}/{photo.name}"
        stages = {
            "fetch (nginx, loopback, kept-alive connection)": (lambda: fetcher.fetch(url), thread),
            "fetch (nginx, loopback, new connection)": (lambda: fresh.fetch(url), thread),
            "image check (Pillow)": (lambda: check_image(data, 50_000_000), thread),
            "SHA-256 (answer cache key)": (lambda: hashlib.sha256(data).digest(), thread),
            "input tensor + request bytes": (
                lambda: encode_predict_request(spec, {"images": string_tensor([data])}),
                thread,
            ),
            "gRPC Predict, client side (tiny model)": (predict_small, process_cpu),
            "decode answer + rank": (lambda: _decode_rank(response), thread),
        }
        found = {name: per_call_us(fn, calls, clock) for name, (fn, clock) in stages.items()}
    body = {"model": TINY, "version": 1, "predictions": [{"label": "x", "score": 0.5}] * 5}
    with Flask("stages").app_context():
        found["JSON answer (Flask's json)"] = per_call_us(
            lambda: flask_json.dumps(body), calls, thread
        )
    return {"calls": calls, "load_average": round(os.getloadavg()[0], 2), "cpu_us": found}


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (220, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _decode_rank(response: Any) -> None:
    from gateway.client import decode_outputs
    from gateway.interface import ItemResult
    from gateway.topk import rank

    rank(decode_outputs(response), [0], [ItemResult()], 5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_stages", description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.calls), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
