"""The image's files as the dyno's user finds them: nothing writable but /models and the run
directory (and the system's scratch folders), no secrets, tests, benchmarks or caches, and the
app directory exactly what the Dockerfile copies."""

from __future__ import annotations

import json
import subprocess

import pytest

from deploy.image import Engine
from tests.image.conftest import RESULTS, TEST_TIMEOUT_S, dyno_uid

# A cold `make image` (the first test's setup) downloads and installs TensorFlow: ~10 min here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TEST_TIMEOUT_S)]

# Walked inside the container as the dyno's uid (the image's Python, no project code).
SCAN = r"""
import json, os, stat
SKIP = ("/proc", "/sys", "/dev")
writable, found = [], []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in SKIP]
    for name in dirs + files:
        path = os.path.join(top, name)
        if os.path.islink(path):
            continue
        if os.access(path, os.W_OK):
            writable.append(path)
        if name.startswith(".env") or name in ("id_rsa", "credentials", ".netrc"):
            found.append(path)
        if top.startswith("/app") and name in ("tests", "bench", ".git", "exports", "var"):
            found.append(path)
app = {"app": sorted(os.listdir("/app")), "serving": sorted(os.listdir("/app/serving"))}
print(json.dumps({"writable": writable, "found": found, **app}))
"""
# Writable by any user in every Debian image: the scratch folders (sticky, so no user can
# touch another's files). The dyno's own: /models and the run dir, which lives in /tmp.
SCRATCH = ("/tmp", "/var/tmp", "/run/lock")
DYNO_WRITES = ("/models", "/tmp/dynoserve")
APP_FILES = {"dyno", "envsettings", "gateway", "modelrepo", "requirements", "serving", "sync"}
# Packages may ship folders named like ours (tests of a library, never of this project).
THIRD_PARTY = ("/usr/lib/python3", "/opt/venv/lib/", "/app/.venv/lib/")


def scan(engine: Engine, image: str) -> dict[str, list[str]]:
    uid = dyno_uid()
    argv = [*engine.argv, "run", "--rm", "--network", "none", "--user", f"{uid}:{uid}"]
    argv += ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=4096:4096"]
    done = subprocess.run(
        [*argv, image, "python", "-c", SCAN], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def files(engine: Engine, image: str) -> dict[str, list[str]]:
    return scan(engine, image)


def test_only_models_and_the_run_dir_are_writable(files: dict[str, list[str]]) -> None:
    allowed = SCRATCH + DYNO_WRITES
    unexpected = [p for p in files["writable"] if p not in allowed]
    assert not unexpected, unexpected[:20]
    assert set(DYNO_WRITES) <= set(files["writable"])


def test_no_secrets_tests_or_bench_in_the_image(files: dict[str, list[str]]) -> None:
    ours = [p for p in files["found"] if not p.startswith(THIRD_PARTY)]
    assert not ours, ours


def test_the_app_dir_holds_what_the_dockerfile_copies(
    files: dict[str, list[str]], image: str
) -> None:
    app = set(files["app"]) - {"supervisord.conf", ".venv"}
    assert app == APP_FILES
    # .venv only where the local model server stands in for the stock binary
    assert (".venv" in files["app"]) == image.endswith(":local")
    # so is serving/local/, the stand-in's code; the launcher's files in every image
    assert ("local" in files["serving"]) == image.endswith(":local")
    assert {"launcher.py", "model_server.flags", "batching.config"} <= set(files["serving"])
    RESULTS.append(
        {"what": "image files", "writable": ",".join(sorted(set(files["writable"]))), "ok": True}
    )
