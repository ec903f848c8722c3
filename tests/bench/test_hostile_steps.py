"""Each of `make bench`'s issue-16 steps, once and small, against the stack as `make run` starts
it (tiny model): internet mode, the slow-URL flood and the uploads each produce their record.
About a minute, most of it the stack starting. No speed is asserted: only that every step ran,
its requests were answered, and the accounting saw the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import internet, procstat, uploads
from bench.images import write_photos
from bench.slowhost import start_slowhost
from bench.stack import ROLES, start_stack, wait_idle
from bench.steps import sequential_latency

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Stack:
    base: str
    endpoint: str
    host_base: str
    photos: list[Path]
    roles: procstat.Roles

    def sampler(self) -> procstat.Sampler:
        return procstat.Sampler(self.roles, interval=0.1)

    def settle(self) -> float:
        return wait_idle(self.base, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from export.testing import write_tiny_model

    work = tmp_path_factory.mktemp("hostile")
    write_tiny_model(work / "exports", "tiny", 1)
    photos = write_photos(work / "photos", 2)
    host, host_base = start_slowhost(photos[0].parent, work / "slowhost.log")
    try:
        dyno, base = start_stack(work / "exports", work / "stack")
        try:
            rules = [*ROLES, ("-m bench.slowhost", "image host")]
            roles = procstat.roles_under({dyno.pid: "dynoserve", host.pid: "image host"}, rules)
            endpoint = f"{base}/v1/models/tiny:predict"
            # First calls (model server kernels, the gateway's pools) stay out of the steps.
            for photo in photos:
                sequential_latency(endpoint, f"{host_base}/{photo.name}", 0, at_least=2)
            yield Stack(base, endpoint, host_base, photos, roles)
        finally:
            dyno.stop(timeout=40)
    finally:
        host.stop()


def test_internet_mode_records_a_step_per_delay(stack: Stack, tmp_path: Path) -> None:
    result = internet.internet_mode(
        stack.endpoint,
        stack.host_base,
        stack.photos,
        [2],
        2.0,
        stack.sampler,
        stack.settle,
        tmp_path,
        delays_ms=(0, 300),
    )
    assert [(s["delay_ms"], s["clients"]) for s in result["steps"]] == [(0, 2), (300, 2)]
    for step in result["steps"]:
        assert step["failed"] == 0, step["failures"]
        assert step["ok"] > 0
        assert step["cpu_s_per_1000_requests"]["image host"] is not None
        assert step["rss_mb"]["gateway"] > 10
    near, far = result["steps"]
    assert far["p50_ms"] > near["p50_ms"]  # every far request waited 240-360 ms on its host
    assert set(result["clients_needed"]) == {"0", "300"}
    assert result["clients_needed"]["300"] >= result["clients_needed"]["0"]


def test_the_flood_records_uploaders_alone_and_beside_it(stack: Stack) -> None:
    plan = internet.FloodPlan(
        requests=3, dribble_s=1.0, uploaders=2, seconds=1.5, calm_s=0.5, head_start_s=0.3
    )
    result = internet.flood(
        stack.endpoint, stack.host_base, stack.photos[0], plan, stack.sampler, stack.settle
    )
    for key in ("calm", "uploaders"):
        assert result[key]["ok"] > 0, result[key]
        assert result[key]["p99_ms"] is not None
    flood = result["flood"]
    # Every slow request in flight when the flood stopped was answered: at least one round.
    assert flood["requests"] >= plan.requests
    assert flood["ok"] == flood["requests"], flood["failures"]
    assert flood["p50_ms"] >= 900  # the body took about 1 s to dribble in
    assert result["rss_mb"]["gateway"] > 10


def test_uploads_record_statuses_and_the_gateways_peak_rss(stack: Stack, tmp_path: Path) -> None:
    photo = uploads.write_upload_photo(tmp_path, target_bytes=300_000, size=(800, 600))
    assert 200_000 < photo.stat().st_size < 400_000
    plan = uploads.UploadPlan(clients=3, seconds=1.0)
    result = uploads.uploads(stack.endpoint, photo, plan, stack.roles, stack.settle)
    assert result["ok"] > 0
    assert result["failed"] == 0, result["failures"]
    assert result["body_mb"] > result["photo_mb"]  # base64 inflates the bytes by 4/3
    assert result["rss_mb_before"]["gateway"] > 10
    assert result["gateway_peak_rss_mb"] >= result["rss_mb_before"]["gateway"]
