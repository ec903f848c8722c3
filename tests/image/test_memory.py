"""Memory inside the container's limit under the original experiment's load: siege with 1, 10,
50 and 100 clients posting image URLs, then two clients sending 16-image requests at once (the
gateway's largest; the batcher runs them in batches of up to 8, serving/batching.config). No
process OOM-killed, no failed request, anonymous memory at most 90 % of the limit; the cgroup's
peak (memory.max_usage_in_bytes: RSS + the page cache charged to it) and each process's peak
RSS are reported.

The demo model runs in the dyno size the README names for it; the benchmark model (MobileNet)
and a ResNet-50-size classifier beside the demo model in theirs (tests/image/sizes.py)."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import procstat, siege
from tests.image.conftest import RESULTS, TEST_TIMEOUT_S
from tests.image.container import Container
from tests.image.sizes import memory_for
from tests.imagehost import ImageServer, image_bytes
from tests.support import REPO_ROOT, VENV_PYTHON, python_env, wait_for

# A cold `make image` (the first test's setup) downloads and installs TensorFlow: ~10 min here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TEST_TIMEOUT_S)]

STEPS = (1, 10, 50, 100)  # the original experiment's client counts, siege -c
STEP_S = 5.0
# The gateway's DYNOSERVE_MAX_BATCH: two such requests at once fill the batcher's 32.
MAX_BATCH_REQUEST = 16
# Anonymous memory (unreclaimable without swap) at the end of the load, as a share of the limit:
# measured 0.46-0.80 (docs/sizing.md; ResNet-50 beside the demo model the highest); above this
# a dyno has too little room left for the pages of the code it runs.
ANON_SHARE_MAX = 0.9
READY_S = 180.0  # bigger models load for longer; R10 is about $PORT, checked in test_boot
ROLE_RULES = (
    ("supervisor.supervisord", "supervisord"),
    ("-m sync", "sync"),
    ("-m serving", "model_server"),
    ("-m gateway", "gateway"),
)
RESNET_SCRIPT = """
import sys, keras
model = keras.applications.ResNet50(weights=None)  # 1000 classes, 25.6 M parameters
model.save(sys.argv[1])
"""


@pytest.fixture(scope="module")
def exports() -> Iterator[Path]:
    """An export folder the container's uid can read (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="dynoserve-image-exports-"))
    root.chmod(0o755)
    shutil.copytree(REPO_ROOT / "exports" / "shapes", root / "shapes")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def export(argv: list[str], timeout: float = 600) -> None:
    done = subprocess.run(
        [str(VENV_PYTHON), *argv],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def add_benchmark_model(exports: Path) -> None:
    if not (exports / "mobilenet").exists():
        export(["-m", "export.benchmodel", "--export-dir", str(exports)])


def add_resnet50(exports: Path) -> None:
    """ResNet-50 with random weights (~98 MB of variables) through `make export`'s path."""
    if (exports / "resnet50").exists():
        return
    work = Path(tempfile.mkdtemp(prefix="dynoserve-resnet-"))
    try:
        checkpoint = work / "resnet50.keras"
        export(["-c", RESNET_SCRIPT, str(checkpoint)])
        labels = work / "labels.txt"
        labels.write_text("".join(f"class-{i}\n" for i in range(1000)))
        export(
            [
                "-m",
                "export",
                str(checkpoint),
                "--name",
                "resnet50",
                "--export-dir",
                str(exports),
                "--labels",
                str(labels),
            ]
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def jpeg_url(image_server: ImageServer) -> str:
    """A 640x480 JPEG, the size of the benchmark's images."""
    return image_server.add_bytes(
        "/photo.jpg", image_bytes("JPEG", (640, 480), "green"), {"Content-Type": "image/jpeg"}
    )


def experiment(
    dyno: Container, model: str, image_url: str, workdir: Path, batch_images: int
) -> dict[str, Any]:
    """siege at each client count against `model`, then the largest batches; per-role peak RSS
    over the whole run."""
    path = f"/v1/models/{model}:predict"
    urls = siege.url_file(workdir / "urls.txt", dyno.base + path, [image_url])
    roles = procstat.roles_under({dyno.host_pid(): "entrypoint"}, ROLE_RULES)
    sampler = procstat.Sampler(roles, interval=0.25).start()
    totals: dict[str, Any] = {"ok": 0, "shed": 0, "failed": 0}
    for clients in STEPS:
        result = siege.run(urls, clients, STEP_S, workdir)
        totals["ok"] += result.ok
        totals["shed"] += result.statuses.get("503", 0)
        totals["failed"] += sum(n for s, n in result.failures.items() if s != "503")
    # siege's clients leave at the end of a step; the gateway still answers what they sent
    # (as after Heroku's H12). Batches measured once that backlog is done, not behind it.
    wait_idle(dyno.base)
    totals["batch_ok"] = largest_batches(dyno.port, path, batch_images)
    usage = sampler.stop()
    return {**totals, "rss_mib": usage.rss_mb}


IDLE_GAUGES = ("dynoserve_gateway_in_flight_requests", "dynoserve_gateway_queue_length")


def wait_idle(base: str, timeout: float = 180) -> None:
    """Until the gateway has no prediction in flight or queued (its /metrics gauges)."""

    def idle() -> bool:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = [
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(IDLE_GAUGES)
        ]
        return bool(values) and not any(values)

    wait_for(idle, timeout, 0.5, "the gateway to finish the load's backlog")


def batch_body(images: int) -> bytes:
    jpeg = base64.b64encode(image_bytes("JPEG", (640, 480), "blue")).decode()
    return json.dumps({"images": [{"image_b64": jpeg}] * images}).encode()


def largest_batches(port: int, path: str, images: int, deadline_s: float = 90) -> list[int]:
    """Two clients sending `images`-image requests at once, so the model server runs batches
    of up to twice that (siege's single images rarely queue that deep once admission sheds):
    the activation peak. Returns each client's final status (200: its batch ran)."""
    answered: list[int] = []
    body = batch_body(images)

    def client() -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline_s)
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            if response.status != 503:  # shed: wait and retry; anything else is the answer
                answered.append(response.status)
                return
            time.sleep(1)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_s + 30)
    return answered


def check_and_report(dyno: Container, models: str, outcome: dict[str, Any]) -> None:
    memory = dyno.memory()
    state = dyno.state()
    RESULTS.append(
        {
            "what": f"memory {models}",
            "memory": dyno.options.memory,
            **memory.mib(),
            **{k: outcome[k] for k in ("ok", "shed", "failed", "batch_images", "batch_ok")},
            **{f"{role}_rss_mib": round(v) for role, v in sorted(outcome["rss_mib"].items())},
        }
    )
    assert not state.get("OOMKilled"), state
    assert memory.oom_kills == 0, memory
    assert outcome["failed"] == 0, outcome
    assert outcome["ok"] > 0, outcome
    assert outcome["batch_ok"] == [200, 200], outcome
    # Not `peak <= limit`: the peak counts page cache, which the kernel lets grow to the limit and
    # then reclaims, and it may charge a page past the limit unconditionally (seen in CI: the
    # limit + 4096 bytes, no OOM kill). What must fit is the memory it cannot reclaim.
    assert memory.rss <= ANON_SHARE_MAX * memory.limit, memory
    assert dyno.running(), dyno.logs()[-3000:]
    # supervisord restarted nothing: every program still has its first process
    assert "exited:" not in dyno.logs(), dyno.logs()[-3000:]


def measure(
    run_dyno: Callable[..., Container],
    memory: str,
    source: Path | dict[str, str],
    model: str,
    image_url: str,
    workdir: Path,
    label: str,
    batch_images: int = MAX_BATCH_REQUEST,
) -> None:
    """One container in `memory` with models from `source` (an export folder, or a bucket's
    variables) under the load; removed when done."""
    # One image URL over and over: the answer cache off, so every request reaches the model.
    env = {"DYNOSERVE_FETCH_ALLOW_PRIVATE": "true", "DYNOSERVE_ANSWER_CACHE_BYTES": "0"}
    if isinstance(source, Path):
        dyno = run_dyno(memory, env, exports=source)
    else:
        dyno = run_dyno(memory, {**env, **source})
    try:
        dyno.wait_ready(READY_S)
        outcome = experiment(dyno, model, image_url, workdir, batch_images)
        check_and_report(dyno, label, {**outcome, "batch_images": 2 * batch_images})
    finally:
        dyno.remove()


def test_demo_model_under_load_in_its_dyno(
    run_dyno: Callable[..., Container],
    demo_bucket: dict[str, str],
    image: str,
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    sample = (REPO_ROOT / "docs" / "samples" / "red-circle.png").read_bytes()
    url = image_server.add_bytes("/red-circle.png", sample, {"Content-Type": "image/png"})
    # From the bucket, as on Heroku: sync's memory includes its S3 client.
    measure(run_dyno, memory_for(image, "demo"), demo_bucket, "shapes", url, tmp_path, "demo")


def test_benchmark_model_under_load_in_its_dyno(
    run_dyno: Callable[..., Container],
    exports: Path,
    image: str,
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    bench = Path(tempfile.mkdtemp(prefix="dynoserve-image-bench-", dir=exports.parent))
    bench.chmod(0o755)
    try:
        add_benchmark_model(bench)
        url = jpeg_url(image_server)
        measure(run_dyno, memory_for(image, "bench"), bench, "mobilenet", url, tmp_path, "bench")
    finally:
        shutil.rmtree(bench, ignore_errors=True)


def test_resnet50_beside_the_demo_model(
    run_dyno: Callable[..., Container],
    exports: Path,
    image: str,
    image_server: ImageServer,
    tmp_path: Path,
) -> None:
    add_resnet50(exports)
    url = jpeg_url(image_server)
    memory = memory_for(image, "resnet+demo")
    # 16 ResNet-50 images take longer than the gateway's gRPC deadline (10 s) on 2 CPUs (504):
    # batches of up to 8 are what this model can serve in time.
    measure(run_dyno, memory, exports, "resnet50", url, tmp_path, "resnet+demo", batch_images=4)
