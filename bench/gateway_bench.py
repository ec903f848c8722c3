"""Gateway benchmark: what the gateway adds to one request, and its memory under siege load.

On the benchmark model (MobileNet v1 224, 40 classes, JPEG decoded in the graph) served by the
local model server, with a 224x224 JPEG:
  1. sequential latency of a direct gRPC Predict (the gateway's own generated stubs, one channel)
     against the same image through the gateway, sent as base64 JSON and as an image URL the
     gateway fetches from a loopback HTTP server, the three taking turns request by request;
  2. `siege -b` on GET /v1/models/<m>:predict?image_url=... while the gateway's RSS is sampled.
Results go to bench/results/gateway.json. Everything shares the machine's 2 cores.
  3. a shorter siege with more users than DYNOSERVE_MAX_IN_FLIGHT (32), to see shedding.
Run: python -m bench.gateway_bench [--model-dir D] [--requests N] [--siege-seconds S] [-c C]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.serving_bench import MODEL, ensure_model, free_port, percentiles, sample_jpeg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "gateway.json"
GATEWAY_PYTHON = ROOT / ".venv-gateway" / "bin" / "python"


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def image_host(image: bytes) -> Iterator[str]:
    """A loopback HTTP server for the image, with a backlog deep enough for siege."""
    handler = type("Handler", (_ImageHandler,), {"body": image})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.request_queue_size = 1024
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/image.jpg"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str], ready: Callable[[], bool]
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2]} did not start; see {log}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def interleaved(
    calls: dict[str, Callable[[], object]], n: int, warmup: int = 10
) -> dict[str, list[float]]:
    """Time each call n times, taking turns, so all paths see the same machine load."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - start) * 1000)
    return samples


def direct_grpc_call(client: Any, image: bytes) -> Callable[[], object]:
    """One Predict straight to the model server with the gateway's generated stubs."""
    from gateway.client import string_tensor

    tensor = {"images": string_tensor([image])}
    return lambda: client.predict(MODEL, None, "serving_default", tensor)


def gateway_call(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, own: list[float]
) -> Callable[[], object]:
    """One request through the gateway; records its own time outside fetch and inference."""
    headers = {"Content-Type": "application/json"} if body else {}

    def call() -> None:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"gateway answered {response.status}: {payload[:300]!r}")
        t = json.loads(payload)["timings_ms"]
        own.append(t["total"] - t["inference"] - t["fetch"])

    return call


def sequential(target: str, port: int, image: bytes, image_url: str, n: int) -> dict[str, Any]:
    from gateway.client import ModelServerClient

    client = ModelServerClient(target, deadline_s=20)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(2)]
    body = json.dumps({"image_b64": base64.b64encode(image).decode()}).encode()
    path = f"/v1/models/{MODEL}:predict"
    own: dict[str, list[float]] = {"gateway_b64": [], "gateway_url": []}
    calls = {
        "direct_grpc": direct_grpc_call(client, image),
        "gateway_b64": gateway_call(conns[0], "POST", path, body, own["gateway_b64"]),
        "gateway_url": gateway_call(
            conns[1], "GET", f"{path}?image_url={image_url}", None, own["gateway_url"]
        ),
    }
    try:
        samples = interleaved(calls, n)
    finally:
        client.close()
        for conn in conns:
            conn.close()
    direct = samples["direct_grpc"]
    return {
        "latency": {name: percentiles(ms) for name, ms in samples.items()},
        # Each gateway request minus the direct call made right before it: robust to load drift.
        "paired": {
            name: percentiles([a - b for a, b in zip(samples[name], direct, strict=True)])
            for name in own
        },
        "own": {name: percentiles(ms[-n:]) for name, ms in own.items()},
    }


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def siege(url: str, concurrency: int, seconds: int, pid: int, rc: Path) -> dict[str, Any]:
    """siege -b against `url` while sampling the gateway's RSS every 100 ms."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_kb(pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    before = rss_kb(pid)
    sampler.start()
    result = subprocess.run(
        [
            "siege",
            "-R",
            str(rc),
            "-b",
            "-j",
            "--no-parser",
            f"-c{concurrency}",
            f"-t{seconds}S",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    done.set()
    sampler.join()
    stats = _siege_json(result.stdout)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "siege": stats,
        "rss_mb_before": round(before / 1024, 1),
        "rss_mb_peak_sampled": round(max(samples, default=0) / 1024, 1),
        "rss_mb_high_water": round(rss_kb(pid, "VmHWM") / 1024, 1),
        "rss_mb_after": round(rss_kb(pid) / 1024, 1),
    }


def _siege_json(stdout: str) -> dict[str, Any]:
    match = re.search(r"\{.*\}", stdout, re.DOTALL)
    if not match:
        return {"raw": stdout[-2000:]}
    parsed: dict[str, Any] = json.loads(match.group(0))
    return parsed


def gateway_env(port: int, grpc_target: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYNOSERVE_", "BUCKETEER_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PORT": str(port),
            "DYNOSERVE_BIND_HOST": "127.0.0.1",
            "DYNOSERVE_MODEL_SERVER": grpc_target,
            "DYNOSERVE_MODELS": MODEL,
            "DYNOSERVE_FETCH_ALLOW_PRIVATE": "1",
            "DYNOSERVE_LOG_LEVEL": "WARNING",
            "DYNOSERVE_GRPC_DEADLINE_S": "20",
        }
    )
    return env


def run(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    base = ensure_model(args.model_dir)
    image = sample_jpeg()
    grpc_port, http_port = free_port(), free_port()
    server_argv = [
        sys.executable, "-m", "serving.local", f"--port={grpc_port}",
        f"--model_name={MODEL}", f"--model_base_path={base}",
    ]  # fmt: skip
    server_env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    gateway_argv = [str(GATEWAY_PYTHON), "-m", "gateway"]
    target = f"127.0.0.1:{grpc_port}"
    readyz = lambda: http_get(http_port, "/readyz")[0] == 200  # noqa: E731
    with (
        image_host(image) as image_url,
        process(server_argv, logs / "model-server.log", server_env, lambda: _grpc_ready(target)),
        process(gateway_argv, logs / "gateway.log", gateway_env(http_port, target), readyz) as gw,
    ):
        measured = sequential(target, http_port, image, image_url, args.requests)
        latency, own, paired = measured["latency"], measured["own"], measured["paired"]
        url_path = f"/v1/models/{MODEL}:predict?image_url={image_url}"
        base_url = f"http://127.0.0.1:{http_port}"
        # siege gives up after 1024 failed transactions by default; shed 503s count as failures.
        rc = logs / "siegerc"
        rc.write_text("failures = 1000000\nprotocol = HTTP/1.1\n")
        load = siege(base_url + url_path, args.concurrency, args.siege_seconds, gw.pid, rc)
        shed = siege(
            base_url + url_path, args.shed_concurrency, args.siege_seconds // 2, gw.pid, rc
        )
        shed["shed_total"] = _metric(http_port, "dynoserve_gateway_shed_requests_total")
    overhead = {
        k: round(latency[k]["p50_ms"] - latency["direct_grpc"]["p50_ms"], 2)
        for k in ("gateway_b64", "gateway_url")
    }
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "client, gateway, model server and image host share the same 2 cores",
        "model": MODEL,
        "image_bytes": len(image),
        "sequential_latency": latency,
        "gateway_overhead_p50_ms": overhead,
        "gateway_overhead_paired_ms": paired,
        "gateway_own_time_ms": own,
        "siege": load,
        "siege_past_the_in_flight_bound": shed,
    }


def _metric(port: int, name: str) -> float:
    _status, body = http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _grpc_ready(target: str) -> bool:
    from gateway.client import ModelServerClient
    from gateway.errors import GatewayError

    client = ModelServerClient(target, deadline_s=2, max_attempts=1)
    try:
        return any(s.state == "AVAILABLE" for s in client.status(MODEL))
    except GatewayError:
        return False
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_bench", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "bench-models")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--siege-seconds", type=int, default=20)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument(
        "--shed-concurrency", type=int, default=64, help="a second siege past the 32 in flight"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        results = run(args, Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    staging = RESULTS.with_suffix(".json.tmp")
    staging.write_text(json.dumps(results, indent=2) + "\n")
    staging.replace(RESULTS)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
