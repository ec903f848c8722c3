"""Helpers of the serving tests: start the local server as a real process and talk to it."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.support import VENV_PYTHON, ManagedProcess, free_port, port_open, python_env


def jpeg(colour: tuple[int, int, int], size: int = 16) -> bytes:
    """A solid-colour JPEG (the tiny model answers by dominant channel: red is 'cat')."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


RED = (220, 10, 10)
GREEN = (10, 220, 10)


def copy_versions(source: Path, target: Path, versions: Sequence[int]) -> Path:
    """Copy model versions (directories named by number) from a written repo into target."""
    target.mkdir(parents=True, exist_ok=True)
    for version in versions:
        shutil.copytree(source / str(version), target / str(version))
    return target


def write_config(path: Path, models: Sequence[str]) -> Path:
    """A models.config (text ModelServerConfig) with one `config { ... }` per entry body."""
    body = "".join(f"  config {{\n{m}\n  }}\n" for m in models)
    path.write_text(f"model_config_list {{\n{body}}}\n")
    return path


def model_entry(
    name: str, base: Path, policy: str = "", labels: dict[str, int] | None = None
) -> str:
    lines = [f'    name: "{name}"', f'    base_path: "{base}"', '    model_platform: "tensorflow"']
    if policy:
        lines.append(f"    model_version_policy {{ {policy} }}")
    for label, version in (labels or {}).items():
        lines.append(f'    version_labels {{ key: "{label}" value: {version} }}')
    return "\n".join(lines)


@dataclass
class Server:
    """A running local server: its process, ports and stubs."""

    process: ManagedProcess
    grpc_port: int
    rest_port: int
    channel: grpc.Channel

    @property
    def predict(self) -> prediction_service_pb2_grpc.PredictionServiceStub:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @property
    def models(self) -> model_service_pb2_grpc.ModelServiceStub:
        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    def rest(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, parsed JSON or text) of one REST call."""
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.rest_port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, _decode(response.read(), response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read(), exc.headers)

    def status(self, model: str) -> dict[int, tuple[str, str]]:
        """version -> (state, error_message) from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self.models.GetModelStatus(request, timeout=10)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {
            s.version: (states.Name(s.state), s.status.error_message)
            for s in response.model_version_status
        }


def _decode(payload: bytes, headers: Any) -> Any:
    if "json" in headers.get("Content-Type", ""):
        return json.loads(payload)
    return payload.decode()


def predict_request(model: str, image: bytes, **spec: Any) -> predict_pb2.PredictRequest:
    """A serving_default PredictRequest for one encoded image."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["images"].dtype = 7  # DT_STRING
    request.inputs["images"].tensor_shape.dim.add().size = 1
    request.inputs["images"].string_val.append(image)
    return request


@contextmanager
def running_server(
    log_path: Path, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[Server]:
    """Start `python -m serving.local` with args plus free ports; yield once both ports accept
    connections (the server opens gRPC before REST, as stock does: a test reading the REST
    metrics right after gRPC came up was refused once in CI)."""
    grpc_port, rest_port = free_port(), free_port()
    argv = [
        str(VENV_PYTHON),
        "-m",
        "serving.local",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        *args,
    ]
    process = ManagedProcess(argv, log_path, env=python_env(env))
    with process:
        process.wait_ready(lambda: port_open(grpc_port) and port_open(rest_port), timeout=timeout)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        try:
            yield Server(process, grpc_port, rest_port, channel)
        finally:
            channel.close()
