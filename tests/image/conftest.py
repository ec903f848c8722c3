"""Fixtures of the image tests: a container engine, the image `make image` builds (once per
session), buckets on the host's moto, containers run as `make image-run` runs them, and a
results table printed at the end of the run."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.image import Engine, RunOptions, app_json_env, find_engine, image_size
from tests.dyno.conftest import new_demo_bucket
from tests.image.container import Container
from tests.support import REPO_ROOT

# What the image tests measured (build, boot, memory, shutdown); printed at the end of the run.
RESULTS: list[dict[str, Any]] = []
BUILD_TIMEOUT_S = 1800  # a cold build downloads TensorFlow (274 MB) for the local model server
# pytest-timeout counts fixture setup: the first test of a session waits for the build too.
TEST_TIMEOUT_S = BUILD_TIMEOUT_S + 600


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("the image: measured")
    for row in RESULTS:
        terminalreporter.write_line("  ".join(f"{k}={v}" for k, v in row.items()))


@pytest.fixture(scope="session")
def engine() -> Engine:
    found = find_engine()
    if found is None:
        pytest.skip(
            "no container engine: docker's daemon does not answer and podman is not installed "
            "(`make image-deps` installs podman, runc and mmdebstrap as root on Debian)"
        )
    return found


@pytest.fixture(scope="session")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image as `make image` builds it here (layers cached by the engine between runs)."""
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            ["make", "--no-print-directory", "image"],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
        )
    text = log.read_text()
    assert done.returncode == 0, text[-5000:]
    tag = next(
        line.split()[2] for line in text.splitlines() if line.startswith("deploy.image: built ")
    )
    RESULTS.append(
        {
            "what": "make image",
            "image": tag,
            "seconds": round(time.monotonic() - started),
            "size_mb": image_size(engine, tag) // 1_000_000,
        }
    )
    return tag


def dyno_uid() -> int:
    """A uid that is neither root nor the image's own (RunOptions draws one at random)."""
    return RunOptions().uid


@pytest.fixture(scope="session")
def demo_bucket(moto_endpoint: str) -> dict[str, str]:
    """Bucketeer's variables (and moto's endpoint) for a bucket holding the demo model."""
    return {**new_demo_bucket(moto_endpoint), "DYNOSERVE_S3_ENDPOINT_URL": moto_endpoint}


def container_env(extra: dict[str, str]) -> dict[str, str]:
    """app.json's config vars with their defaults, as Heroku sets them, plus `extra`."""
    env = app_json_env({})
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ:  # the local model server is TensorFlow
        env["TF_ENABLE_ONEDNN_OPTS"] = os.environ["TF_ENABLE_ONEDNN_OPTS"]
    return {**env, **extra}


@pytest.fixture(scope="module")
def run_dyno(engine: Engine, image: str) -> Iterator[Callable[..., Container]]:
    """run_dyno(memory=..., env=..., exports=...) -> a started container, removed at the end
    of the module."""
    started: list[Container] = []

    def run(memory: str, env: dict[str, str], exports: Path | None = None) -> Container:
        options = RunOptions(image=image, memory=memory, exports=exports, env=container_env(env))
        container = Container(engine, options).start()
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()
