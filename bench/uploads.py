"""Large uploads against the running stack: the gateway's memory when bodies are megabytes.

64 clients, each its own address, post a ~4.5 MB camera JPEG as base64 JSON (a ~6 MB body)
to `POST /v1/models/<m>:predict` back to back; the gateway's peak RSS (bench.procstat, sampled
every 0.25 s, summed over its processes) and every answer's status are recorded. The photo is a
5-megapixel scene from bench/images.py with strong sensor noise, so it does not compress: a
smooth synthetic image would make a small JPEG and hide the cost of the bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import images, loadclient, procstat, steps

CAMERA = (2592, 1944)  # a 5-megapixel camera's frame
UPLOAD_BYTES = 4_500_000
NOISE_SIGMA = 40  # sensor noise, grey levels: what keeps the JPEG large
RSS_INTERVAL_S = 0.25


def camera_photo(seed: int = 0, size: tuple[int, int] = CAMERA) -> Image.Image:
    """A photo-like scene at camera size with strong sensor noise."""
    scene = np.asarray(images.photo(seed, size), dtype=np.int16)
    noise = np.random.default_rng(seed).normal(0, NOISE_SIGMA, scene.shape)
    return Image.fromarray(np.clip(scene + noise, 0, 255).astype(np.uint8))


def write_upload_photo(
    folder: Path, target_bytes: int = UPLOAD_BYTES, size: tuple[int, int] = CAMERA
) -> Path:
    """The upload JPEG (closest size to `target_bytes`), made once and reused."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"upload-{size[0]}x{size[1]}-{target_bytes}.jpg"
    if not path.exists():
        staging = path.with_suffix(".tmp")
        staging.write_bytes(images.encode(camera_photo(0, size), target_bytes))
        staging.replace(path)
    return path


@dataclass(frozen=True)
class UploadPlan:
    clients: int = 64
    seconds: float = 20.0


QUICK_UPLOADS = UploadPlan(seconds=8.0)


def upload_body(photo: Path) -> bytes:
    return json.dumps({"image_b64": base64.b64encode(photo.read_bytes()).decode()}).encode()


def uploads(
    endpoint: str,
    photo: Path,
    plan: UploadPlan,
    roles: procstat.Roles,
    settle: Callable[[], float],
) -> dict[str, Any]:
    """The upload step, once the gateway is idle: answers by status and latency, peak RSS per
    role, the gateway's RSS before it started."""
    body = upload_body(photo)
    waited = settle()
    before = procstat.rss_mb_by_role(roles())
    addresses = [loadclient.client_address(i) for i in range(plan.clients)]
    runner = steps.RunnerCpu()
    sampler = procstat.Sampler(roles, interval=RSS_INTERVAL_S).start()
    record = loadclient.run_for(
        loadclient.KeepAliveLoad.posting(endpoint, body, plan.clients, addresses), plan.seconds
    )
    usage = sampler.stop()
    return {
        "plan": plan.__dict__,
        **runner.finish(usage),
        "idle_wait_s": waited,
        "photo_mb": round(photo.stat().st_size / 1e6, 2),
        "body_mb": round(len(body) / 1e6, 2),
        **record,
        "rss_mb_before": before,
        "rss_mb": usage.rss_mb,
        "gateway_peak_rss_mb": usage.rss_mb.get("gateway"),
    }
