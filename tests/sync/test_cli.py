"""`python -m sync` and `python -m sync.publish` as supervisord and `make publish` run them: in
the gateway's virtualenv (boto3, no TensorFlow), against the moto server."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from devtools.fakeserver import FakeRestStatusServer
from sync.local import LocalSource
from sync.manifest_store import BucketManifests
from sync.repository import Repository
from sync.settings import Settings
from sync.syncer import Syncer
from tests.support import (
    GATEWAY_PYTHON,
    VENV_PYTHON,
    ManagedProcess,
    free_port,
    port_open,
    python_env,
)
from tests.sync.helpers import make_version, publish, served, version_dirs


def run(
    module: str, env: Mapping[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GATEWAY_PYTHON), "-m", module, *args],
        env=python_env(dict(env)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_publish_then_sync_round_trip(env: dict) -> None:
    endpoint = env["DYNOSERVE_S3_ENDPOINT_URL"]
    exports = Path(env["DYNOSERVE_EXPORT_DIR"])
    make_version(exports, "cats", 1)
    folder = make_version(exports, "cats", 2, size=300_000)
    published = run("sync.publish", env, "--name", "cats", "--export-dir", str(exports))
    assert published.returncode == 0, published.stderr
    assert "published cats/2" in published.stderr
    # The bucket URL, then the endpoint: never the model name glued onto the endpoint URL.
    where = f"to s3://{env['BUCKETEER_BUCKET_NAME']}/models/cats/2/ at {endpoint}"
    assert where in published.stderr
    assert f"{endpoint}/cats" not in published.stderr
    again = run("sync.publish", env, "--name", "cats", "--version", "2")
    assert again.returncode == 73
    assert "already published" in again.stderr
    synced = run("sync", env, "--once")
    assert synced.returncode == 0, synced.stderr
    assert served(env) == {"cats": ((2,), {})}
    installed = Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "cats" / "2"
    for path in folder.rglob("*"):
        if path.is_file():
            assert (installed / path.relative_to(folder)).read_bytes() == path.read_bytes()


def test_publish_without_bucket_or_export_says_what_to_do(env: dict, tmp_path: Path) -> None:
    no_bucket = {k: v for k, v in env.items() if not k.startswith("BUCKETEER_")}
    result = run("sync.publish", no_bucket, "--name", "cats")
    assert result.returncode == 78
    assert "BUCKETEER_BUCKET_NAME" in result.stderr
    result = run("sync.publish", env, "--name", "cats", "--export-dir", str(tmp_path / "none"))
    assert result.returncode == 73
    assert "make export" in result.stderr


@pytest.mark.slow
def test_sync_killed_mid_download_leaves_nothing_half_visible(env: dict) -> None:
    publish(env, "cats", 1, size=6_000_000)
    base = Path(env["DYNOSERVE_MODEL_BASE_PATH"])
    slow = {**env, "DYNOSERVE_SYNC_MAX_BANDWIDTH": "1000000", "DYNOSERVE_SYNC_CONCURRENCY": "1"}
    argv = [str(GATEWAY_PYTHON), "-m", "sync", "--once"]
    with ManagedProcess(argv, base.parent / "killed.log", env=python_env(slow)) as proc:
        proc.wait_ready(lambda: _staged_bytes(base) > 500_000, timeout=30)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait()
    assert version_dirs(env, "cats") == []
    assert not (base / "models.config").exists()
    rerun = run("sync", env, "--once")
    assert rerun.returncode == 0, rerun.stderr
    assert "unfinished staging" in rerun.stderr
    assert served(env) == {"cats": ((1,), {})}
    assert not any((base / ".staging").iterdir())


def _staged_bytes(base: Path) -> int:
    staging = base / ".staging"
    if not staging.is_dir():
        return 0
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def test_s3_down_at_boot_without_local_copy_exits_69(env: dict) -> None:
    down = {**env, "DYNOSERVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = run("sync", down, "--once")
    assert result.returncode == 69
    assert "cannot reach" in result.stderr
    assert "no local copy" in result.stderr


def test_s3_down_at_boot_with_local_copy_serves_it_loudly(env: dict) -> None:
    publish(env, "cats", 1)
    assert run("sync", env, "--once").returncode == 0
    down = {**env, "DYNOSERVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = run("sync", down, "--once")
    assert result.returncode == 0, result.stderr
    assert "SERVING THE LOCAL COPY" in result.stderr
    assert served(env) == {"cats": ((1,), {})}
    status = json.loads((Path(env["DYNOSERVE_MODEL_BASE_PATH"]) / "sync-status.json").read_text())
    assert "earlier boot" in status["degraded"]


def test_wrong_credentials_exit_77_and_name_the_variables(env: dict, tmp_path: Path) -> None:
    port = free_port()
    argv = [str(VENV_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    strict = python_env({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    with ManagedProcess(argv, tmp_path / "moto-auth.log", env=strict) as server:
        server.wait_ready(lambda: port_open(port))
        wrong = {**env, "DYNOSERVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        result = run("sync", wrong, "--once")
    assert result.returncode == 77, result.stderr
    assert "BUCKETEER_AWS_ACCESS_KEY_ID" in result.stderr


def test_bad_setting_exits_78(env: dict) -> None:
    result = run("sync", {**env, "DYNOSERVE_SYNC_INTERVAL": "soon"}, "--once")
    assert result.returncode == 78
    assert "DYNOSERVE_SYNC_INTERVAL" in result.stderr


@pytest.mark.slow
def test_watch_mode_follows_the_bucket_and_stops_on_sigterm(env: dict) -> None:
    publish(env, "cats", 1)
    base = Path(env["DYNOSERVE_MODEL_BASE_PATH"])
    argv = [str(GATEWAY_PYTHON), "-m", "sync"]
    with ManagedProcess(argv, base.parent / "watch.log", env=python_env(env)) as proc:
        proc.wait_ready(lambda: served(env) == {"cats": ((1,), {})})
        publish(env, "cats", 2)
        proc.wait_ready(lambda: served(env) == {"cats": ((2,), {})})
        assert proc.stop() == 0
    assert "stopping after the current pass" in proc.log()


def test_export_folder_is_the_source_without_a_bucket(tmp_path: Path) -> None:
    env = {
        "DYNOSERVE_EXPORT_DIR": str(tmp_path / "exports"),
        "DYNOSERVE_MODEL_BASE_PATH": str(tmp_path / "models"),
        "DYNOSERVE_MODEL_SERVER_REST_URL": f"http://127.0.0.1:{free_port()}",
    }
    make_version(tmp_path / "exports", "cats", 1)
    make_version(tmp_path / "exports", "cats", 2)
    (tmp_path / "exports" / "cats" / ".staging-3").mkdir()  # export's own staging: not a version
    settings = Settings.from_env(env)
    syncer = Syncer(settings, LocalSource(settings.export_dir))
    syncer.boot()
    assert served(env) == {"cats": ((2,), {})}
    syncer.run_pass()
    assert syncer.status.versions_installed_total == 1
    assert (tmp_path / "models" / "cats" / "2" / "variables").is_dir()


def test_second_sync_on_the_same_repository_exits_75(env: dict) -> None:
    with Repository(Path(env["DYNOSERVE_MODEL_BASE_PATH"])).exclusive():
        result = run("sync", env, "--once")
        pruning = run("sync", env, "--prune")
    assert result.returncode == 75
    assert "another sync process" in result.stderr
    assert pruning.returncode == 75
    assert "stop `make run`" in pruning.stderr


def bucket_manifest(env: Mapping[str, str], model: str) -> dict | None:
    settings = Settings.from_env(env)
    assert settings.s3 is not None
    store = BucketManifests(settings.s3)
    try:
        manifest = store.read(model)
    finally:
        store.close()
    return None if manifest is None else json.loads(manifest.render())


def test_publish_carries_the_manifest_and_labels_move_in_the_bucket(
    env: dict, model_server: FakeRestStatusServer
) -> None:
    exports = Path(env["DYNOSERVE_EXPORT_DIR"])
    make_version(exports, "cats", 1)
    make_version(exports, "cats", 2)
    demo = {"model_version_policy": {"all": {}}, "version_labels": {"stable": 1, "canary": 2}}
    (exports / "cats" / "dynoserve-model.json").write_text(json.dumps(demo))
    published = run("sync.publish", env, "--name", "cats", "--all")
    assert published.returncode == 0, published.stderr
    assert "published cats/1" in published.stderr
    assert "published cats/2" in published.stderr
    where = f"s3://{env['BUCKETEER_BUCKET_NAME']}/models/cats/dynoserve-model.json"
    assert f"wrote manifest {where}" in published.stderr
    assert bucket_manifest(env, "cats") == demo
    again = run("sync.publish", env, "--name", "cats", "--all")
    assert again.returncode == 0, again.stderr
    assert "cats/2 is published already" in again.stderr
    assert "unchanged" in again.stderr

    assert run("sync", env, "--once").returncode == 0
    model_server.serve_config(env)  # both versions load; now the labels may be written
    assert run("sync", env, "--once").returncode == 0
    assert served(env) == {"cats": ((1, 2), {"stable": 1, "canary": 2})}

    # `make labels NAME=cats LABELS="stable=2"`: same credentials and endpoint as sync.
    moved = run("sync.labels", env, "--name", "cats", "stable=2")
    assert moved.returncode == 0, moved.stderr
    assert bucket_manifest(env, "cats") == {**demo, "version_labels": {"canary": 2, "stable": 2}}
    assert run("sync", env, "--once").returncode == 0
    assert served(env) == {"cats": ((1, 2), {"stable": 2, "canary": 2})}

    # The export folder's older manifest does not move the labels back...
    kept = run("sync.publish", env, "--name", "cats", "--all")
    assert "kept the bucket's manifest" in kept.stderr
    assert bucket_manifest(env, "cats")["version_labels"]["stable"] == 2  # type: ignore[index]
    # ...unless asked to.
    replaced = run("sync.publish", env, "--name", "cats", "--all", "--replace-manifest")
    assert replaced.returncode == 0, replaced.stderr
    assert bucket_manifest(env, "cats") == demo


def test_labels_sync_would_ignore_are_refused(env: dict) -> None:
    exports = Path(env["DYNOSERVE_EXPORT_DIR"])
    for version in (1, 2):
        make_version(exports, "cats", version)
    assert run("sync.publish", env, "--name", "cats", "--all").returncode == 0
    unpublished = run("sync.labels", env, "--name", "cats", "stable=7")
    assert unpublished.returncode == 65
    assert "no complete version 7 (published: 1, 2)" in unpublished.stderr
    unserved = run("sync.labels", env, "--name", "cats", "stable=1 canary=2")
    assert unserved.returncode == 65
    assert "serves 2 only; add POLICY=all or POLICY=specific:1,2" in unserved.stderr
    assert bucket_manifest(env, "cats") is None
    ok = run("sync.labels", env, "--name", "cats", "stable=1 canary=2", "--policy", "all")
    assert ok.returncode == 0, ok.stderr
    assert bucket_manifest(env, "cats") == {
        "model_version_policy": {"all": {}},
        "version_labels": {"canary": 2, "stable": 1},
    }
    assert run("sync.labels", env, "--name", "cats", "stable").returncode == 64


def test_labels_without_a_bucket_go_to_the_export_folder(tmp_path: Path) -> None:
    env = {"DYNOSERVE_EXPORT_DIR": str(tmp_path / "exports")}
    make_version(tmp_path / "exports", "cats", 1)
    result = run("sync.labels", env, "--name", "cats", "stable=1")
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "exports/cats/dynoserve-model.json").read_text())
    assert written["version_labels"] == {"stable": 1}


def test_model_removed_from_the_export_folder_is_reported_then_pruned(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    env = {
        "DYNOSERVE_EXPORT_DIR": str(exports),
        "DYNOSERVE_MODEL_BASE_PATH": str(tmp_path / "models"),
        # No model server runs: as after `make run` was stopped.
        "DYNOSERVE_MODEL_SERVER_REST_URL": f"http://127.0.0.1:{free_port()}",
    }
    make_version(exports, "cats", 1)
    make_version(exports, "dogs", 1)
    assert run("sync", env, "--once").returncode == 0
    shutil.rmtree(exports / "cats")
    kept = run("sync", env, "--once")
    assert kept.returncode == 0, kept.stderr
    assert "cats is gone from local folder" in kept.stderr
    assert served(env) == {"cats": ((1,), {}), "dogs": ((1,), {})}
    pruned = run("sync", env, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned cats" in pruned.stderr
    assert served(env) == {"dogs": ((1,), {})}
    assert version_dirs(env, "cats") == []
    # The last model too: `--prune` is an explicit request, even for an empty source.
    shutil.rmtree(exports / "dogs")
    assert run("sync", env, "--prune").returncode == 0
    assert served(env) == {}
    assert version_dirs(env, "dogs") == []


def test_sync_reads_models_config_without_flask_or_tensorflow() -> None:
    # sync parses models.config with modelrepo's protobuf message (modelrepo.modelconfig);
    # that must not bring the web framework or TensorFlow into the sync process.
    code = (
        "import sys, sync.cli, modelrepo.modelconfig; "
        "print(sorted({'flask', 'werkzeug', 'tensorflow'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [str(GATEWAY_PYTHON), "-c", code],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
