"""The whole dyno under supervisord as Heroku runs it: S3 (moto), sync, model server, gateway.

Same supervisord.conf as the Docker image; the model server is the project's local stand-in for
stock TF Serving (python -m serving finds no tensorflow_model_server here).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.imagehost import ImageServer, image_bytes
from tests.support import (
    GATEWAY_PYTHON,
    REPO_ROOT,
    VENV_PYTHON,
    ManagedProcess,
    free_port,
    http_json,
    http_ok,
    python_env,
    wait_for,
)

pytestmark = pytest.mark.slow

DEMO_EXPORTS = REPO_ROOT / "exports"
SAMPLES = REPO_ROOT / "docs" / "samples"


def publish(env: dict[str, str], export_dir: Path, version: int, name: str = "tiny") -> None:
    argv = [str(GATEWAY_PYTHON), "-m", "sync.publish", "--name", name]
    argv += ["--export-dir", str(export_dir), "--version", str(version)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.testing import write_tiny_model

    base = tmp_path_factory.mktemp("exports")
    write_tiny_model(base, "tiny", 1, seed=0)
    write_tiny_model(base, "tiny", 2, seed=1)
    return base


@pytest.fixture(scope="module")
def dyno(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, exports: Path
) -> Iterator[dict[str, Any]]:
    """supervisord running the three programs against a bucket holding tiny/1."""
    import boto3

    root = tmp_path_factory.mktemp("dyno")
    bucket = "dynoserve-e2e"
    assert (DEMO_EXPORTS / "shapes" / "2" / "saved_model.pb").exists(), "run `make demo-model`"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    port = free_port()
    env = python_env(
        {
            "PORT": str(port),
            "BUCKETEER_BUCKET_NAME": bucket,
            "BUCKETEER_AWS_ACCESS_KEY_ID": "testing",
            "BUCKETEER_AWS_SECRET_ACCESS_KEY": "testing",
            "DYNOSERVE_S3_ENDPOINT_URL": moto_endpoint,
            "DYNOSERVE_RUNTIME_PYTHON": str(GATEWAY_PYTHON),
            "DYNOSERVE_MODEL_PYTHON": str(VENV_PYTHON),
            "DYNOSERVE_MODEL_BASE_PATH": str(root / "models"),
            "DYNOSERVE_RUN_DIR": str(root),
            "DYNOSERVE_MODEL_SERVER_GRPC_PORT": str(free_port()),
            "DYNOSERVE_MODEL_SERVER_REST_PORT": str(free_port()),
            "DYNOSERVE_SYNC_INTERVAL": "0.5",
            "DYNOSERVE_FETCH_ALLOW_PRIVATE": "true",
            "DYNOSERVE_BIND_HOST": "127.0.0.1",
        }
    )
    publish(env, exports, 1)
    for version in (1, 2):
        publish(env, DEMO_EXPORTS, version, name="shapes")
    # Serve both demo versions and label them, the way an operator would from the bucket.
    manifest = {"model_version_policy": {"all": {}}, "version_labels": {"stable": 1, "canary": 2}}
    s3.put_object(
        Bucket=bucket, Key="models/shapes/dynoserve-model.json", Body=json.dumps(manifest).encode()
    )
    argv = [str(GATEWAY_PYTHON), "-m", "dyno"]  # the image's CMD: supervisord + log FIFO
    with ManagedProcess(argv, root / "dyno.log", env=env) as proc:
        base = f"http://127.0.0.1:{port}"
        proc.wait_ready(lambda: http_ok(base + "/readyz"), timeout=180)
        yield {"base": base, "env": env, "proc": proc}


def test_predicts_from_a_url_once_ready(dyno: dict[str, Any], image_server: ImageServer) -> None:
    url = image_server.add_bytes("/red.png", image_bytes("PNG", (40, 40), "red"))
    endpoint = dyno["base"] + "/v1/models/tiny:predict?top_k=2"
    status, _, body = http_json(endpoint, {"image_url": url})
    assert status == 200, body
    assert body["model"] == "tiny"
    assert int(body["version"]) == 1
    assert len(body["predictions"]) == 2
    assert {p["label"] for p in body["predictions"]} <= {"cat", "dog", "bird"}
    assert body["predictions"][0]["score"] >= body["predictions"][1]["score"]


def test_a_published_version_goes_live_without_a_deploy(
    dyno: dict[str, Any], exports: Path, image_server: ImageServer
) -> None:
    publish(dyno["env"], exports, 2)

    def serves_v2() -> bool:
        status, _, body = http_json(dyno["base"] + "/v1/models/tiny")
        return status == 200 and "2" in json.dumps(body)

    dyno["proc"].wait_ready(serves_v2, timeout=90)
    url = image_server.add_bytes("/blue.png", image_bytes("PNG", (40, 40), "blue"))
    wait_for(
        lambda: (
            http_json(dyno["base"] + "/v1/models/tiny:predict?version=2", {"image_url": url})[0]
            == 200
        ),
        timeout=60,
        what="version 2 to answer",
    )
    endpoint = dyno["base"] + "/v1/models/tiny:predict?version=2"
    status, _, body = http_json(endpoint, {"image_url": url})
    assert status == 200, body
    assert int(body["version"]) == 2


@pytest.mark.parametrize(
    ("sample", "query", "version"),
    [
        ("red-circle.png", "label=stable", 1),
        ("green-square.png", "version=1", 1),
        ("blue-triangle.png", "label=canary", 2),
        ("red-triangle.gif", "", 2),
        ("blue-circle.jpg", "version=2", 2),
    ],
)
def test_demo_model_classifies_the_readme_samples(
    dyno: dict[str, Any], sample: str, query: str, version: int
) -> None:
    """The README's examples: upload a sample, pin a version or label, get the right class."""
    import base64

    def labelled() -> bool:
        status, _, body = http_json(dyno["base"] + "/v1/models/shapes")
        return status == 200 and {"stable", "canary"} <= set(body.get("labels", {}))

    dyno["proc"].wait_ready(labelled, timeout=60)
    data = base64.b64encode((SAMPLES / sample).read_bytes()).decode()
    url = f"{dyno['base']}/v1/models/shapes:predict?{query}"
    status, _, body = http_json(url, {"image_b64": data})
    assert status == 200, body
    assert body["version"] == version
    assert body["predictions"][0]["label"] == sample.rsplit(".", 1)[0]


def test_unknown_version_is_a_404(dyno: dict[str, Any], image_server: ImageServer) -> None:
    url = image_server.add_bytes("/green.png", image_bytes("PNG", (40, 40), "green"))
    endpoint = dyno["base"] + "/v1/models/tiny:predict?version=99"
    status, _, body = http_json(endpoint, {"image_url": url})
    assert status == 404, body
    assert body["error"]["code"]


def test_sigterm_stops_the_dyno_well_within_herokus_30_seconds(dyno: dict[str, Any]) -> None:
    started = time.monotonic()
    code = dyno["proc"].stop(timeout=30)
    assert time.monotonic() - started < 30
    assert code == 0, dyno["proc"].log()[-3000:]
