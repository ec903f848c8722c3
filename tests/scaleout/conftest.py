"""Fixtures of the scale-out test: a bucket holding the demo model's version 1 labelled stable,
two dynos syncing from it, and the router in front of them; numbers printed at the end."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.dynostack import Dyno, Router, run_env
from modelrepo import MANIFEST_NAME
from tests.scaleout.load import LABEL, MODEL
from tests.support import GATEWAY_PYTHON, REPO_ROOT, python_env

EXPORTS = REPO_ROOT / "exports"
PREFIX = "models"
SYNC_INTERVAL_S = 2.0
# What the test measured, printed at the end of the run (and quoted in the README).
RESULTS: list[dict[str, Any]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("scale-out: two dynos behind a router")
    for row in RESULTS:
        terminalreporter.write_line("  ".join(f"{k}={v}" for k, v in row.items()))


@dataclass
class Bucket:
    """The bucket both dynos sync from, and what the test does to it."""

    endpoint: str
    env: dict[str, str]
    client: Any

    @property
    def name(self) -> str:
        return self.env["BUCKETEER_BUCKET_NAME"]

    def publish(self, version: int) -> None:
        """`python -m sync.publish` of the demo model's exported version (marker written last)."""
        argv = [str(GATEWAY_PYTHON), "-m", "sync.publish", "--name", MODEL]
        argv += ["--export-dir", str(EXPORTS), "--version", str(version)]
        env = python_env({**self.env, "DYNOSERVE_S3_ENDPOINT_URL": self.endpoint})
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def write_manifest(self, labels: dict[str, int]) -> None:
        """Rewrite the model's manifest in the bucket: every version served, these labels."""
        body = {"model_version_policy": {"all": {}}, "version_labels": labels}
        key = f"{PREFIX}/{MODEL}/{MANIFEST_NAME}"
        self.client.put_object(Bucket=self.name, Key=key, Body=json.dumps(body).encode())

    def remove_version(self, version: int) -> None:
        """Take a version out as an operator would: its completion marker first, then its files."""
        folder = f"{PREFIX}/{MODEL}/{version}/"
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=folder)
        keys = sorted(o["Key"] for o in listed.get("Contents", []))
        keys.sort(key=lambda k: not k.endswith("dynoserve-complete.json"))
        assert keys, f"nothing under {folder}"
        assert keys[0].endswith("dynoserve-complete.json"), keys
        for key in keys:
            self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str) -> Iterator[Bucket]:
    """A bucket with the demo model's version 1, every version served, `stable` -> 1."""
    assert (EXPORTS / MODEL / "2" / "saved_model.pb").exists(), "run `make demo-model`"
    env = {
        "BUCKETEER_BUCKET_NAME": f"dynoserve-scaleout-{uuid.uuid4().hex[:8]}",
        "BUCKETEER_AWS_ACCESS_KEY_ID": "testing",
        "BUCKETEER_AWS_SECRET_ACCESS_KEY": "testing",
        "BUCKETEER_AWS_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=env["BUCKETEER_BUCKET_NAME"])
    found = Bucket(moto_endpoint, env, client)
    found.publish(1)
    found.write_manifest({LABEL: 1})
    yield found
    client.close()


@dataclass
class Fleet:
    """The dynos of the app behind the router; `scale_up()` adds one as `heroku ps:scale` does."""

    root: Path
    env: dict[str, str]
    router: Router
    dynos: list[Dyno] = field(default_factory=list)

    def start_dyno(self) -> Dyno:
        name = f"web.{len(self.dynos) + 1}"
        dyno = Dyno(run_env(self.root / name, self.env), name=name, work=self.root / name)
        self.dynos.append(dyno)
        return dyno.start()

    def scale_up(self) -> Dyno:
        """A new dyno, routed to as soon as its gateway binds $PORT (as Heroku's router does)."""
        dyno = self.start_dyno()
        dyno.wait_port(timeout=60)
        self.router.route([d.port for d in self.dynos])
        return dyno

    @property
    def router_port(self) -> int:
        return self.router.port


@pytest.fixture(scope="module")
def fleet(bucket: Bucket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two dynos on the bucket, ready, behind the router."""
    root = tmp_path_factory.mktemp("scaleout")
    env = {
        **bucket.env,
        "DYNOSERVE_S3_ENDPOINT_URL": bucket.endpoint,
        "DYNOSERVE_SYNC_INTERVAL": str(SYNC_INTERVAL_S),
    }
    fleet = Fleet(root, env, Router(root / "router"))
    try:
        for _ in range(2):
            fleet.start_dyno()
        for dyno in fleet.dynos:
            dyno.wait_ready(timeout=120)
        fleet.router.start([d.port for d in fleet.dynos])
        yield fleet
    finally:
        fleet.router.stop()
        for dyno in fleet.dynos:
            dyno.stop()


def dyno_logs(fleet: Fleet) -> str:
    return "\n".join(f"--- {d.name} ---\n{d.log()[-3000:]}" for d in fleet.dynos)
