"""Gateway fixtures: a fake predictor, test images, a socket guard (the image server is shared)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.app import create_app
from gateway.client import Signature, TensorSpec, VersionMetadata
from gateway.errors import GatewayError, ModelNotFound, NotFound
from gateway.images import check_image
from gateway.interface import (
    ItemResult,
    ModelInfo,
    PredictRequest,
    PredictResult,
    Readiness,
    Score,
    VersionInfo,
)
from gateway.settings import Settings
from tests.support import (
    GATEWAY_PYTHON,
    VENV_PYTHON,
    ManagedProcess,
    free_port,
    http_ok,
    python_env,
)


def animated_gif(frames: int = 3, size: tuple[int, int] = (8, 8)) -> bytes:
    colors = ["red", "green", "blue", "yellow", "white"]
    images = [Image.new("RGB", size, colors[i % len(colors)]) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=50)
    return out.getvalue()


@dataclass
class FakePredictor:
    """Stands in for the model server in routing tests: it vets images but runs no model."""

    models: dict[str, list[int]] = field(default_factory=lambda: {"shapes": [1, 2]})
    labels: dict[str, dict[str, int]] = field(default_factory=lambda: {"shapes": {"stable": 1}})
    ready: bool = True
    fail_with: GatewayError | None = None
    gate: threading.Event | None = None
    calls: list[PredictRequest] = field(default_factory=list)

    def predict(self, request: PredictRequest) -> PredictResult:
        self.calls.append(request)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        if request.model not in self.models:
            raise ModelNotFound(f"no model named {request.model!r}")
        version = self._version(request)
        items = [
            self._item(None if image.pixels else image.data, request.top_k)
            for image in request.images
        ]
        return PredictResult(request.model, version, items, 1.0, 2.0, 3.0)

    def _version(self, request: PredictRequest) -> int:
        versions = self.models[request.model]
        if request.label is not None:
            if request.label not in self.labels.get(request.model, {}):
                raise NotFound("no such label", code="label_not_found")
            return self.labels[request.model][request.label]
        if request.version is not None and request.version not in versions:
            raise NotFound("no such version", code="version_not_found")
        return request.version or max(versions)

    def _item(self, data: bytes | None, k: int) -> ItemResult:
        try:
            if data is not None:
                check_image(data, 40_000_000)
        except GatewayError as exc:
            return ItemResult(error=exc)
        scores = [Score("cat", 0, 0.7), Score("dog", 1, 0.2), Score("bird", 2, 0.1)]
        return ItemResult(predictions=scores[:k])

    def version_metadata(self, request: PredictRequest) -> VersionMetadata:
        """The demo model's two signatures, as the model server describes them."""
        if request.model not in self.models:
            raise ModelNotFound(f"no model named {request.model!r}")
        outputs = {
            "probabilities": TensorSpec("DT_FLOAT", (-1, 3)),
            "classes": TensorSpec("DT_STRING", (-1, 3)),
        }
        signatures = {
            "serving_default": Signature(
                "serving_default", {"images": TensorSpec("DT_STRING", (-1,))}, outputs
            ),
            "predict_pixels": Signature(
                "predict_pixels", {"pixels": TensorSpec("DT_FLOAT", (-1, 4, 4, 3))}, outputs
            ),
        }
        return VersionMetadata(request.model, self._version(request), signatures)

    def list_models(self, request_id: str = "") -> list[ModelInfo]:
        return [self.describe(name) for name in sorted(self.models)]

    def describe(self, model: str, request_id: str = "") -> ModelInfo:
        if model not in self.models:
            raise ModelNotFound(f"no model named {model!r}")
        versions = [VersionInfo(v, "AVAILABLE") for v in sorted(self.models[model], reverse=True)]
        return ModelInfo(model, versions, self.labels.get(model, {}))

    def readiness(self) -> Readiness:
        state = "AVAILABLE" if self.ready else "LOADING"
        return Readiness(self.ready, dict.fromkeys(self.models, state))

    def known_models(self) -> set[str]:
        return set(self.models)

    def close(self) -> None:
        pass


@pytest.fixture
def fake_predictor() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def make_client(fake_predictor: FakePredictor) -> Callable[..., Any]:
    """Flask test client factory: make_client(api_keys=("k",), ...) overrides settings."""

    def make(predictor: Any = None, **overrides: Any) -> Any:
        settings = Settings(**overrides)
        app = create_app(settings, predictor or fake_predictor)
        return app.test_client()

    return make


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    return make_client()


# --- nothing leaves loopback ------------------------------------------------------------------

_real_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address: Any) -> Any:
    host = address[0] if isinstance(address, tuple) else ""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
        raise AssertionError(f"test tried to connect to {address!r}: only loopback is allowed")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def loopback_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python-level connect in gateway tests must target loopback; others fail loudly."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


# --- the real stack: local model server + gateway process -------------------------------------

MODELS_CONFIG = """model_config_list {{
  config {{
    name: "shapes"
    base_path: "{base}/shapes"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""


@dataclass
class Stack:
    """A running model server (and its repository) the request-path tests share."""

    grpc_target: str
    config_file: Path
    log_dir: Path


@pytest.fixture(scope="session")
def model_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local TF-Serving-compatible server with model `shapes` versions 1 and 2."""
    from export.testing import write_tiny_model
    from gateway.client import ModelServerClient

    base = tmp_path_factory.mktemp("models")
    write_tiny_model(base, "shapes", 1, seed=0)
    write_tiny_model(base, "shapes", 2, seed=1)
    config = base / "models.config"
    config.write_text(MODELS_CONFIG.format(base=base))
    port = free_port()
    argv = [
        str(VENV_PYTHON),
        "-m",
        "serving.local",
        f"--port={port}",
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        "--file_system_poll_wait_seconds=0",
    ]
    logs = tmp_path_factory.mktemp("logs")
    client = ModelServerClient(f"127.0.0.1:{port}", 2.0, max_attempts=1)

    def available() -> bool:
        try:
            return sum(s.state == "AVAILABLE" for s in client.status("shapes")) == 2
        except GatewayError:
            return False

    with ManagedProcess(argv, logs / "model-server.log") as server:
        server.wait_ready(available, timeout=120)
        client.close()
        yield Stack(f"127.0.0.1:{port}", config, logs)


def gateway_env(stack: Stack, port: int, **extra: str) -> dict[str, str]:
    env = python_env(
        {
            "PORT": str(port),
            "DYNOSERVE_BIND_HOST": "127.0.0.1",
            "DYNOSERVE_MODEL_SERVER": stack.grpc_target,
            "DYNOSERVE_MODEL_CONFIG_FILE": str(stack.config_file),
            "DYNOSERVE_FETCH_ALLOW_PRIVATE": "1",
            "DYNOSERVE_SYNC_STATUS_FILE": str(stack.log_dir / "no-sync-status.json"),
        }
    )
    env.update(extra)
    return env


@dataclass
class GatewayProcess:
    process: ManagedProcess
    base: str

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid


def start_gateway(stack: Stack, name: str, **extra: str) -> GatewayProcess:
    """`python -m gateway` in the gateway venv (no TensorFlow), ready when /readyz says so."""
    port = free_port()
    argv = [str(GATEWAY_PYTHON), "-m", "gateway"]
    process = ManagedProcess(
        argv, stack.log_dir / f"{name}.log", env=gateway_env(stack, port, **extra)
    )
    base = f"http://127.0.0.1:{port}"
    process.start_ready(lambda: http_ok(base + "/readyz"), timeout=60)
    return GatewayProcess(process, base)


@pytest.fixture(scope="session")
def gateway(model_stack: Stack) -> Iterator[GatewayProcess]:
    running = start_gateway(model_stack, "gateway")
    yield running
    running.process.stop()
