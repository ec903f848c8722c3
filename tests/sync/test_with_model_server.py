"""Sync driving the project's TF-Serving-compatible local server (`python -m serving.local`),
which applies TF Serving's label rules: sync's label moves and deletions must never be refused.

Slow (TensorFlow loads real tiny models), so one test walks the whole life cycle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sync.cli import build_source
from sync.marker import build_marker
from sync.publish import Publisher, PublishRequest
from sync.server_status import ServerStatus
from sync.settings import Settings
from sync.syncer import Syncer
from tests.support import (
    GATEWAY_PYTHON,
    REPO_ROOT,
    VENV_PYTHON,
    ManagedProcess,
    free_port,
    port_open,
    python_env,
    wait_for,
)
from tests.sync.helpers import put_manifest, served, upload_as_is, version_dirs

pytestmark = pytest.mark.slow


def label_status(rest: str, model: str, label: str) -> int:
    try:
        with urllib.request.urlopen(f"{rest}/v1/models/{model}/labels/{label}", timeout=5) as r:
            body: Any = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        return 0
    return int(body["model_version_status"][0]["version"])


def label_target(rest: str, model: str, label: str) -> int:
    """The version a label resolves to, from the label's metadata (0: the label is unknown)."""
    try:
        url = f"{rest}/v1/models/{model}/labels/{label}/metadata"
        with urllib.request.urlopen(url, timeout=5) as r:
            body: Any = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        return 0
    return int(body["model_spec"]["version"])


def local_server_argv(grpc_port: int, rest_port: int, settings: Settings) -> list[str]:
    return [
        str(VENV_PYTHON), "-m", "serving.local", f"--port={grpc_port}",
        f"--rest_api_port={rest_port}", f"--model_config_file={settings.config_file}",
        "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=1",
    ]  # fmt: skip


def test_label_swap_and_removal_with_the_local_model_server(
    env: dict, s3: Any, tmp_path: Path
) -> None:
    from export.testing import write_tiny_model

    exports = Path(env["DYNOSERVE_EXPORT_DIR"])
    rest_port, grpc_port = free_port(), free_port()
    rest = f"http://127.0.0.1:{rest_port}"
    env = {**env, "DYNOSERVE_MODEL_SERVER_REST_URL": rest}
    settings = Settings.from_env(env)
    assert settings.s3 is not None
    publisher = Publisher(settings.s3)
    publisher.publish(PublishRequest("tiny", 1, write_tiny_model(exports, "tiny", 1, seed=0)))
    put_manifest(s3, env, "tiny", {"version_labels": {"stable": 1}})  # policy: latest 1
    syncer = Syncer(settings, build_source(settings))
    syncer.boot()
    assert served(env) == {"tiny": ((1,), {})}  # nothing loaded yet: no label at boot
    status = ServerStatus(rest)
    argv = local_server_argv(grpc_port, rest_port, settings)
    with ManagedProcess(argv, tmp_path / "server.log", env=python_env()) as server:
        server.wait_ready(lambda: port_open(rest_port), timeout=120)
        server.wait_ready(lambda: (status.states("tiny") or {}).get(1) == "AVAILABLE")
        syncer.run_pass()
        server.wait_ready(lambda: label_status(rest, "tiny", "stable") == 1)

        # Version 2 arrives and the label should follow, while latest 1 drops version 1.
        publisher.publish(PublishRequest("tiny", 2, write_tiny_model(exports, "tiny", 2, seed=1)))
        put_manifest(s3, env, "tiny", {"version_labels": {"stable": 2}})
        syncer.run_pass()
        assert served(env) == {"tiny": ((1, 2), {"stable": 1})}  # two-step swap, step one
        server.wait_ready(lambda: (status.states("tiny") or {}).get(2) == "AVAILABLE")
        syncer.run_pass()
        assert served(env) == {"tiny": ((2,), {"stable": 2})}
        server.wait_ready(lambda: label_status(rest, "tiny", "stable") == 2)

        def released() -> bool:
            syncer.run_pass()
            return version_dirs(env, "tiny") == [2]

        wait_for(released, timeout=60, interval=0.5, what="version 1 deleted after unload")
        assert (status.states("tiny") or {}).get(2) == "AVAILABLE"
        log = server.log()
    assert "not currently available" not in log
    assert "Request to assign label" not in log


def test_published_demo_model_answers_its_labels(env: dict, tmp_path: Path) -> None:
    """`make publish NAME=shapes ALL=1` on the demo model, then `?label=stable` must resolve:
    the versions and the manifest (stable=1, canary=2) reach the bucket and the server."""
    demo = REPO_ROOT / "exports"
    assert (demo / "shapes" / "2" / "saved_model.pb").exists(), "run `make demo-model`"
    rest_port, grpc_port = free_port(), free_port()
    rest = f"http://127.0.0.1:{rest_port}"
    env = {**env, "DYNOSERVE_MODEL_SERVER_REST_URL": rest, "DYNOSERVE_EXPORT_DIR": str(demo)}
    argv = [str(GATEWAY_PYTHON), "-m", "sync.publish", "--name", "shapes", "--all"]
    published = subprocess.run(
        argv, env=python_env(env), capture_output=True, text=True, timeout=120, check=False
    )
    assert published.returncode == 0, published.stderr
    settings = Settings.from_env(env)
    syncer = Syncer(settings, build_source(settings))
    syncer.boot()
    status = ServerStatus(rest)
    with ManagedProcess(
        local_server_argv(grpc_port, rest_port, settings), tmp_path / "server.log", env=python_env()
    ) as server:
        server.wait_ready(lambda: port_open(rest_port), timeout=120)
        server.wait_ready(lambda: (status.states("shapes") or {}).keys() >= {1, 2})
        server.wait_ready(lambda: set((status.states("shapes") or {}).values()) == {"AVAILABLE"})
        syncer.run_pass()
        server.wait_ready(lambda: label_target(rest, "shapes", "stable") == 1)
        assert label_target(rest, "shapes", "canary") == 2


def test_broken_versions_are_refused_or_reported_while_version_1_serves(
    env: dict, s3: Any, tmp_path: Path
) -> None:
    """Issue 10 (b) and (c): a truncated variables file in the export folder is refused by
    `python -m sync.publish`; a garbage saved_model.pb behind a valid marker (written to the
    bucket directly) fails to load, version 1 keeps serving, and the status file says so within
    ~25 s, on every pass after."""
    from export.testing import write_tiny_model

    exports = Path(env["DYNOSERVE_EXPORT_DIR"])
    bucket = env["BUCKETEER_BUCKET_NAME"]
    rest_port, grpc_port = free_port(), free_port()
    rest = f"http://127.0.0.1:{rest_port}"
    env = {**env, "DYNOSERVE_MODEL_SERVER_REST_URL": rest}
    settings = Settings.from_env(env)
    assert settings.s3 is not None
    Publisher(settings.s3).publish(
        PublishRequest("tiny", 1, write_tiny_model(exports, "tiny", 1, seed=0))
    )

    # (b) A variables file truncated after the export: refused, nothing uploaded.
    data = write_tiny_model(exports, "tiny", 2, seed=1) / "variables"
    shard = next(data.glob("variables.data-*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    argv = [str(GATEWAY_PYTHON), "-m", "sync.publish", "--name", "tiny", "--version", "2"]
    refused = subprocess.run(
        argv, env=python_env(env), capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode != 0
    assert "not what export wrote and verified" in refused.stderr, refused.stderr
    assert s3.list_objects_v2(Bucket=bucket, Prefix="models/tiny/2/")["KeyCount"] == 0

    syncer = Syncer(settings, build_source(settings))
    status = ServerStatus(rest)
    # Flags as serving/model_server.flags sets them: a failed load is retried once, 5 s later.
    retries = ["--max_num_load_retries=1", "--load_retry_interval_micros=5000000"]
    argv = local_server_argv(grpc_port, rest_port, settings) + retries
    syncer.boot()
    with ManagedProcess(argv, tmp_path / "server.log", env=python_env()) as server:
        server.wait_ready(lambda: port_open(rest_port), timeout=120)
        server.wait_ready(lambda: (status.states("tiny") or {}).get(1) == "AVAILABLE")
        # (c) A garbage graph behind a valid marker, written straight to the bucket.
        broken = tmp_path / "broken"
        shutil.copytree(exports / "tiny" / "1", broken)
        (broken / "saved_model.pb").write_bytes(b"\x08garbage, not a SavedModel" * 40)
        upload_as_is(s3, bucket, "models/tiny/3/", build_marker("tiny", 3, broken), broken)
        started = time.monotonic()

        def reported() -> bool:
            syncer.run_pass()
            return "3" in sync_status(settings)["models"]["tiny"]["failed_versions"]

        wait_for(reported, timeout=25, interval=0.5, what="version 3 reported as failed")
        took = time.monotonic() - started
        for _ in range(3):
            syncer.run_pass()
            tiny = sync_status(settings)["models"]["tiny"]
            assert "failed to load" in tiny["failed_versions"]["3"], tiny
            assert tiny["served"] == [1]
            assert (status.states("tiny") or {}).get(1) == "AVAILABLE"
        assert served(env) == {"tiny": ((1,), {})}
    print(f"version 3 reported as failed {took:.1f} s after it was written to the bucket")


def sync_status(settings: Settings) -> dict[str, Any]:
    return json.loads(settings.status_file.read_text())
