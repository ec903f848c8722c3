"""Fixtures of the dyno simulation: the dyno's uid, a bucket holding the demo model, an S3
endpoint that can go down, scratch folders the dyno's uid may write, and a results table."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.dynostack import Dyno
from tests.dyno.stack import Layout, TcpSwitch, can_switch_user, image_dyno, image_env
from tests.support import GATEWAY_PYTHON, REPO_ROOT, python_env

DEMO_EXPORTS = REPO_ROOT / "exports"
# Per fault: what the load saw and how long recovery took; printed at the end of the run.
RESULTS: list[dict[str, Any]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("dyno simulation: per fault")
    for row in RESULTS:
        terminalreporter.write_line("  ".join(f"{k}={v}" for k, v in row.items()))


@pytest.fixture(scope="session")
def dyno_user() -> None:
    if not can_switch_user():
        pytest.skip("the dyno runs as uid 10001 with another user's stdout pipe: needs root")


@pytest.fixture(scope="session")
def demo_bucket(moto_endpoint: str) -> dict[str, str]:
    """Bucketeer's variables for a bucket holding the demo model (shapes, version 2)."""
    return new_demo_bucket(moto_endpoint)


def new_demo_bucket(moto_endpoint: str) -> dict[str, str]:
    """A new bucket with the demo model's version 2 published (`python -m sync.publish`), for a
    test that changes what is in it; Bucketeer's variables for it."""
    assert (DEMO_EXPORTS / "shapes" / "2" / "saved_model.pb").exists(), "run `make demo-model`"
    bucket = f"dynoserve-dyno-{uuid.uuid4().hex[:8]}"
    env = {
        "BUCKETEER_BUCKET_NAME": bucket,
        "BUCKETEER_AWS_ACCESS_KEY_ID": "testing",
        "BUCKETEER_AWS_SECRET_ACCESS_KEY": "testing",
        "BUCKETEER_AWS_REGION": "us-east-1",
    }
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=bucket)
    client.close()
    argv = [str(GATEWAY_PYTHON), "-m", "sync.publish", "--name", "shapes"]
    argv += ["--export-dir", str(DEMO_EXPORTS), "--version", "2"]
    publish_env = python_env({**env, "DYNOSERVE_S3_ENDPOINT_URL": moto_endpoint})
    done = subprocess.run(
        argv, env=publish_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def s3_client(moto_endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def s3_switch(moto_endpoint: str) -> Iterator[TcpSwitch]:
    """The dyno's S3 endpoint: up (forwarding to moto); a test that takes it down puts it back."""
    switch = TcpSwitch(int(moto_endpoint.rsplit(":", 1)[1]))
    switch.up()
    yield switch
    switch.down()


@pytest.fixture(scope="module")
def make_layout() -> Iterator[Callable[[], Layout]]:
    """make_layout() -> fresh writable places for one dyno, removed at the end of the module."""
    roots: list[Path] = []

    def make() -> Layout:
        # Not under pytest's tmp_path: its root is mode 0700, closed to the dyno's uid.
        roots.append(Path(tempfile.mkdtemp(prefix="dynoserve-dyno-")))
        return Layout.create(roots[-1])

    yield make
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def make_dyno(
    dyno_user: None, demo_bucket: dict[str, str], s3_switch: TcpSwitch
) -> Iterator[Callable[..., Dyno]]:
    """make_dyno(layout, **env) -> a started dyno, stopped (and killed) at the end of the module."""
    started: list[Dyno] = []

    def make(layout: Layout, **extra: str) -> Dyno:
        env = image_env(layout, {**demo_bucket, "DYNOSERVE_S3_ENDPOINT_URL": s3_switch.url})
        env.update(extra)
        dyno = image_dyno(env).start()
        started.append(dyno)
        return dyno

    yield make
    for dyno in started:
        dyno.stop()
