"""Sync driving the project's TF-Serving-compatible local server (`python -m serving.local`),
which applies TF Serving's label rules: sync's label moves and deletions must never be refused.

Slow (TensorFlow loads real tiny models), so one test walks the whole life cycle.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sync.cli import build_source
from sync.publish import Publisher, PublishRequest
from sync.server_status import ServerStatus
from sync.settings import Settings
from sync.syncer import Syncer
from tests.support import VENV_PYTHON, ManagedProcess, free_port, port_open, python_env, wait_for
from tests.sync.helpers import put_manifest, served, version_dirs

pytestmark = pytest.mark.slow


def label_status(rest: str, model: str, label: str) -> int:
    try:
        with urllib.request.urlopen(f"{rest}/v1/models/{model}/labels/{label}", timeout=5) as r:
            body: Any = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        return 0
    return int(body["model_version_status"][0]["version"])


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
    argv = [
        str(VENV_PYTHON), "-m", "serving.local", f"--port={grpc_port}",
        f"--rest_api_port={rest_port}", f"--model_config_file={settings.config_file}",
        "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=1",
    ]  # fmt: skip
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
