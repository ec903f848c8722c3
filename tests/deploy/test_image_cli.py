"""deploy/image.py without an engine: the build swaps only the base and the model server stage,
and `run` is a dyno's (another uid, its memory with no swap, loopback ports, app.json's env)."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.image import (
    IMAGE_UID,
    LOCAL_BASE,
    STOP_TIMEOUT_S,
    Engine,
    RunOptions,
    app_json_env,
    bucket_env,
    build_argv,
    run_argv,
)
from tests.support import REPO_ROOT

PODMAN = Engine("podman", ("podman", "--runtime", "runc"))
DOCKER = Engine("docker", ("docker",))


def build_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--build-arg"]


def test_the_stock_build_passes_no_build_argument() -> None:
    """Heroku's build: the Dockerfile's defaults, nothing swapped."""
    assert build_args(build_argv(DOCKER, "stock", "dynoserve:stock")) == []


def test_the_local_build_swaps_only_the_base_and_the_model_server() -> None:
    argv = build_argv(PODMAN, "local", "dynoserve:local")
    assert build_args(argv) == [f"BASE_IMAGE={LOCAL_BASE}", "MODEL_SERVER=local"]
    assert argv[-1] == str(REPO_ROOT)
    assert "/etc/ssl/certs:/etc/ssl/certs:ro" in argv  # pip reaches the index from the build


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def env_of(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--env"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_run_is_a_dynos_run() -> None:
    options = RunOptions(memory="1g", env={"DYNOSERVE_S3_PREFIX": "models"})
    argv = run_argv(PODMAN, options)
    uid, gid = option(argv, "--user").split(":")
    assert uid == gid != str(IMAGE_UID)
    assert int(uid) > 0
    assert option(argv, "--memory") == option(argv, "--memory-swap") == "1g"
    assert option(argv, "--stop-timeout") == str(STOP_TIMEOUT_S)
    env = env_of(argv)
    assert env["PORT"] == str(options.port)
    assert env["DYNOSERVE_BIND_HOST"] == "127.0.0.1"  # host network: loopback only
    assert env["DYNOSERVE_MODEL_SERVER_GRPC_PORT"] != "8500"  # 8500 may be taken on the host
    assert env["DYNOSERVE_S3_PREFIX"] == "models"
    assert argv[-1] == options.image


def test_run_mounts_an_export_folder_read_only(tmp_path: Path) -> None:
    argv = run_argv(PODMAN, RunOptions(exports=tmp_path))
    assert option(argv, "-v") == f"{tmp_path}:/exports:ro"
    assert env_of(argv)["DYNOSERVE_EXPORT_DIR"] == "/exports"


def test_random_uids_are_never_the_images() -> None:
    assert all(RunOptions().uid not in (0, IMAGE_UID) for _ in range(200))


def test_app_json_defaults_and_the_callers_values() -> None:
    spec = json.loads((REPO_ROOT / "app.json").read_text())["env"]
    env = app_json_env({"DYNOSERVE_SYNC_INTERVAL": "5", "UNRELATED": "x"})
    assert env["DYNOSERVE_SYNC_INTERVAL"] == "5"
    assert env["DYNOSERVE_S3_PREFIX"] == spec["DYNOSERVE_S3_PREFIX"]["value"]
    assert "UNRELATED" not in env
    assert "DYNOSERVE_API_KEYS" not in env  # no default, not set: left unset


def test_bucket_variables_pass_through() -> None:
    environ = {"BUCKETEER_BUCKET_NAME": "b", "DYNOSERVE_S3_ENDPOINT_URL": "http://x", "HOME": "/"}
    assert bucket_env(environ) == {
        "BUCKETEER_BUCKET_NAME": "b",
        "DYNOSERVE_S3_ENDPOINT_URL": "http://x",
    }
