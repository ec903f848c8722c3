"""Fixtures for the sync tests: a bucket per test on the session's moto S3 server (root
conftest), stand-in model versions and a fake model-server status endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.fakeserver import FakeRestStatusServer
from devtools.s3 import s3_client


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[Any]:
    client = s3_client(moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"dynoserve-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def model_server() -> Iterator[FakeRestStatusServer]:
    with FakeRestStatusServer() as server:
        yield server


@pytest.fixture
def env(
    tmp_path: Path, moto_endpoint: str, bucket: str, model_server: FakeRestStatusServer
) -> dict:
    """Environment for a sync against this test's bucket, as Heroku would set it."""
    return {
        "BUCKETEER_BUCKET_NAME": bucket,
        "BUCKETEER_AWS_ACCESS_KEY_ID": "testing",
        "BUCKETEER_AWS_SECRET_ACCESS_KEY": "testing",
        "DYNOSERVE_S3_ENDPOINT_URL": moto_endpoint,
        "DYNOSERVE_MODEL_BASE_PATH": str(tmp_path / "models"),
        "DYNOSERVE_EXPORT_DIR": str(tmp_path / "exports"),
        "DYNOSERVE_MODEL_SERVER_REST_URL": model_server.url,
        "DYNOSERVE_SYNC_INTERVAL": "0.2",
    }
