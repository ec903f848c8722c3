"""Boot as on Heroku: a random $PORT, a uid that is not the image's, the memory limit, app.json's
environment and the demo model from a bucket (moto on the host); /readyz 200 within 60 s (R10),
then every curl of the README's "Use the API" against the container."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dyno.conftest import s3_client
from tests.dyno.stack import uid_of
from tests.image.conftest import RESULTS, TEST_TIMEOUT_S
from tests.image.container import Container
from tests.image.sizes import memory_for
from tests.support import GATEWAY_PYTHON, REPO_ROOT, python_env

# A cold `make image` (the first test's setup) downloads and installs TensorFlow: ~10 min here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TEST_TIMEOUT_S)]

BOOT_DEADLINE_S = 60.0  # Heroku's R10: the web process must bind $PORT within 60 s
README = (REPO_ROOT / "README.md").read_text()
MAKE_RUN_BASE = "http://127.0.0.1:8080"


def publish_all(moto_endpoint: str, exports: Path) -> dict[str, str]:
    """A new bucket with every version of the demo model and its manifest (labels), as
    `make publish NAME=shapes ALL=1` leaves it; Bucketeer's variables and the endpoint."""
    env = {
        "BUCKETEER_BUCKET_NAME": f"dynoserve-image-{uuid.uuid4().hex[:8]}",
        "BUCKETEER_AWS_ACCESS_KEY_ID": "testing",
        "BUCKETEER_AWS_SECRET_ACCESS_KEY": "testing",
        "BUCKETEER_AWS_REGION": "us-east-1",
        "DYNOSERVE_S3_ENDPOINT_URL": moto_endpoint,
    }
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=env["BUCKETEER_BUCKET_NAME"])
    client.close()
    argv = [str(GATEWAY_PYTHON), "-m", "sync.publish", "--name", "shapes", "--all"]
    done = subprocess.run(
        [*argv, "--export-dir", str(exports)],
        env=python_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env


@pytest.fixture(scope="module")
def dyno(run_dyno: Callable[..., Container], moto_endpoint: str, image: str) -> Container:
    bucket = publish_all(moto_endpoint, REPO_ROOT / "exports")
    return run_dyno(memory_for(image, "demo"), bucket)


def test_boots_to_ready_within_r10_from_the_bucket(dyno: Container) -> None:
    port_s = dyno.wait_port(BOOT_DEADLINE_S)
    ready_s = dyno.wait_ready(BOOT_DEADLINE_S)
    RESULTS.append(
        {
            "what": "boot",
            "memory": dyno.options.memory,
            "port_s": round(port_s, 1),
            "readyz_s": round(ready_s, 1),
        }
    )
    assert ready_s < BOOT_DEADLINE_S
    log = dyno.logs()
    assert "dynoserve-image-" in log  # sync's lines reach `podman logs` through the FIFO
    uids = {uid_of(pid) for pid in dyno.host_pids()}
    assert uids == {dyno.options.uid}, uids


def readme_curls() -> list[str]:
    """The curl commands of the README's "Use the API" examples, continuation lines joined."""
    section = README.split("## Use the API", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


@pytest.mark.parametrize("command", readme_curls())
def test_every_readme_curl_answers_from_the_container(dyno: Container, command: str) -> None:
    dyno.wait_ready(BOOT_DEADLINE_S)
    assert MAKE_RUN_BASE in command
    shell = command.replace(MAKE_RUN_BASE, dyno.base).replace(
        "curl -s", "curl -s -w '\\n%{http_code}'", 1
    )
    done = subprocess.run(
        ["bash", "-c", shell], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200", (status, body[:500])
    answer = json.loads(body)
    assert "error" not in answer, answer
    version = re.search(r"version=(\d)", command)
    if version and "predictions" in answer:
        assert answer["version"] == int(version.group(1))
