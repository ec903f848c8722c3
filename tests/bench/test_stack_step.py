"""One real step end to end: the stack as `make run` starts it (tiny model), nginx, siege, and
the per-role accounting `make bench` reports. About 30 s, most of it the stack starting."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.__main__ import run_system
from bench.images import write_photos
from bench.nginx import start_nginx
from bench.stack import ROLES, start_stack, wait_idle

pytestmark = pytest.mark.slow


def test_one_step_against_the_real_stack(tmp_path: Path) -> None:
    from export.testing import write_tiny_model

    write_tiny_model(tmp_path / "exports", "tiny", 1)
    photos = write_photos(tmp_path / "photos", 2)
    nginx, image_base = start_nginx(photos[0].parent, tmp_path / "nginx")
    try:
        stack, base = start_stack(tmp_path / "exports", tmp_path / "stack")
        try:
            args = argparse.Namespace(seconds=1.0, clients=[2, 4])
            urls = [f"{image_base}/{p.name}" for p in photos]
            endpoint = f"{base}/v1/models/tiny:predict"
            settled: list[float] = []

            def settle() -> float:
                settled.append(wait_idle(base))
                return settled[-1]

            roots = {nginx.pid: "nginx"}
            result = run_system(
                "dynoserve", stack, endpoint, urls, args, roots, ROLES, tmp_path, settle
            )
        finally:
            stack.stop(timeout=40)
    finally:
        nginx.stop()
    assert [step["clients"] for step in result["steps"]] == [2, 4]
    # Each step began once the stack had answered what the one before left behind.
    assert [step["settled_s"] for step in result["steps"]] == settled
    step = result["steps"][0]
    assert result["one_client"]["p50_ms"] > 0
    assert step["failed"] == 0, step["failures"]
    assert step["ok"] > 0
    for role in ("gateway", "model server"):
        assert step["cpu_s_per_1000_requests"][role] is not None, step
        assert step["rss_mb"][role] > 10, step
