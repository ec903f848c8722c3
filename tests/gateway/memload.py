"""Large uploads against a real gateway process, with its memory sampled from /proc.

`python -m tests.gateway.memload --clients 64 --seconds 20` starts a FakeModelServer (gRPC on
loopback, named so: it answers Predict with fixed scores after a delay, one call at a time, like
a busy model server on two cores), a real `python -m gateway` in the gateway virtualenv, and N
closed-loop clients posting one noisy photo as base64 JSON; it prints the gateway's peak RSS
(VmHWM) and the answers by status. tests/gateway/test_membudget_process.py runs it scaled down.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from devtools.net import free_port, http_ok
from devtools.processes import GATEWAY_PYTHON, ManagedProcess, python_env
from gateway._proto.dynoserve.tf_serving import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    services_pb2_grpc,
)
from tests.gateway.grpcfake import serve_fake

MODEL = "photos"
MODELS_CONFIG = f"""model_config_list {{
  config {{ name: "{MODEL}" base_path: "/nonexistent/{MODEL}" model_platform: "tensorflow" }}
}}
"""


def noisy_jpeg(width: int = 2600, height: int = 2000, quality: int = 90) -> bytes:
    """A JPEG of random pixels: noise does not compress, so 2600x2000 at q90 is ~4.5 MB, a
    phone photo's size."""
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def b64_body(jpeg: bytes) -> bytes:
    return json.dumps({"image_b64": base64.b64encode(jpeg).decode("ascii")}).encode()


class FakeModelServer(
    services_pb2_grpc.PredictionServiceServicer, services_pb2_grpc.ModelServiceServicer
):
    """A fake of TF Serving's gRPC API for one model taking encoded images: Predict holds a lock
    for `delay_s` per image (one batch at a time, as a model server with little CPU would)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._busy = threading.Lock()

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        rows = max(1, next(iter(request.inputs.values())).tensor_shape.dim[0].size)
        with self._busy:
            time.sleep(self.delay_s * rows)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 1
        probs = response.outputs["probabilities"]
        probs.dtype = 1  # DT_FLOAT
        probs.tensor_shape.dim.add(size=rows)
        probs.tensor_shape.dim.add(size=3)
        probs.tensor_content = struct.pack("<3f", 0.2, 0.5, 0.3) * rows
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 1
        sigs = get_model_metadata_pb2.SignatureDefMap()
        images = sigs.signature_def["serving_default"].inputs["images"]
        images.dtype = 7  # DT_STRING
        images.tensor_shape.dim.add(size=-1)
        response.metadata["signature_def"].Pack(sigs)
        return response

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=30)  # AVAILABLE
        return response


@contextmanager
def fake_model_server(delay_s: float) -> Iterator[str]:
    """The fake on a loopback port; yields its gRPC target. TF Serving accepts large messages
    too (its default is INT_MAX)."""
    with serve_fake(FakeModelServer(delay_s), max_message_bytes=64 * 1024 * 1024) as (_, target):
        yield target


@contextmanager
def gateway_process(target: str, work: Path, **extra: str) -> Iterator[tuple[ManagedProcess, str]]:
    """A real `python -m gateway` against `target`; yields the process and its base URL."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "models.config"
    config.write_text(MODELS_CONFIG)
    port = free_port()
    env = python_env(
        {
            "PORT": str(port),
            "DYNOSERVE_BIND_HOST": "127.0.0.1",
            "DYNOSERVE_MODEL_SERVER": target,
            "DYNOSERVE_MODEL_CONFIG_FILE": str(config),
            "DYNOSERVE_SYNC_STATUS_FILE": str(work / "no-sync-status.json"),
            "DYNOSERVE_LOG_LEVEL": "WARNING",
            # Identical bodies: each must be vetted and sent, not answered from the answer cache.
            "DYNOSERVE_ANSWER_CACHE_BYTES": "0",
            **extra,
        }
    )
    process = ManagedProcess([str(GATEWAY_PYTHON), "-m", "gateway"], work / "gateway.log", env=env)
    base = f"http://127.0.0.1:{port}"
    process.start_ready(lambda: http_ok(base + "/readyz"), timeout=60)
    try:
        yield process, base
    finally:
        process.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@dataclass
class Answer:
    status: int
    code: str | None
    retry_after: str | None
    seconds: float


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    rss_start_kib: int = 0
    hwm_kib: int = 0
    rss_end_kib: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statuses(self) -> Counter[tuple[int, str | None]]:
        return Counter((a.status, a.code) for a in self.answers)

    def summary(self) -> str:
        ok = sorted(a.seconds for a in self.answers if a.status == 200)
        p50 = f"{ok[len(ok) // 2]:.2f} s" if ok else "-"
        counts = ", ".join(f"{s} {c or ''}: {n}" for (s, c), n in sorted(self.statuses().items()))
        return (
            f"gateway RSS {self.rss_start_kib / 1024:.0f} MiB at start, peak (VmHWM) "
            f"{self.hwm_kib / 1024:.0f} MiB, {self.rss_end_kib / 1024:.0f} MiB at the end; "
            f"answers: {counts}; p50 of 200s {p50}; gateway CPU {self.cpu_s:.1f} s "
            f"in {self.wall_s:.1f} s"
        )


def post(base: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """One POST on its own connection; the answer's status, error code and Retry-After."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    start = time.perf_counter()
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    code = None
    if response.status != 200:
        code = json.loads(payload).get("error", {}).get("code")
    return Answer(
        response.status, code, response.getheader("Retry-After"), time.perf_counter() - start
    )


def run_clients(
    base: str,
    pid: int,
    body: bytes,
    clients: int,
    seconds: float,
    distinct: bool = False,
) -> LoadResult:
    """`clients` closed-loop clients posting `body` for `seconds`; a refused client waits its
    Retry-After and tries again. `distinct`: each client says its own address in
    X-Forwarded-For (as Heroku's router would for clients on different hosts), else all are
    one client (127.0.0.1)."""
    result = LoadResult(rss_start_kib=memory_kib(pid)["VmRSS"])
    cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
    path = f"/v1/models/{MODEL}:predict"
    end = time.monotonic() + seconds

    def client(number: int) -> None:
        headers = {"X-Forwarded-For": f"198.51.100.{number + 1}"} if distinct else {}
        while time.monotonic() < end:
            try:
                answer = post(base, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                answer = Answer(0, type(exc).__name__, None, 0.0)
            with result.lock:
                result.answers.append(answer)
            if answer.status in (429, 503):
                time.sleep(float(answer.retry_after or 1))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.cpu_s, result.wall_s = cpu_seconds(pid) - cpu_start, time.monotonic() - wall_start
    memory = memory_kib(pid)
    result.hwm_kib, result.rss_end_kib = memory["VmHWM"], memory["VmRSS"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model-delay", type=float, default=0.05, help="fake Predict s/image")
    parser.add_argument("--work", type=Path, default=Path("/tmp/memload"))
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    parser.add_argument(
        "--distinct", action="store_true", help="each client its own X-Forwarded-For address"
    )
    args = parser.parse_args()
    jpeg = noisy_jpeg()
    body = b64_body(jpeg)
    print(f"photo {len(jpeg) / 1e6:.2f} MB, body {len(body) / 1e6:.2f} MB, {args.clients} clients")
    extra = dict(item.split("=", 1) for item in args.env)
    with (
        fake_model_server(args.model_delay) as target,
        gateway_process(target, args.work, **extra) as (process, base),
    ):
        result = run_clients(base, process.pid, body, args.clients, args.seconds, args.distinct)
    print(result.summary())


if __name__ == "__main__":
    main()
