"""The answer cache's step of `make bench`: the sweep's photos asked again and again, on a stack
of its own with the cache on. The sweep's stack has it off (bench/stack.py): its 8 photos repeat,
and it measures the model. Here every request after the first of each photo is a hit, which
/metrics confirms (misses = photos), so the latency is the cache's: fetch + SHA-256 + lookup."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import procstat, siege, steps
from bench.stack import MODEL, ROLES, start_stack
from devtools.dynostack import Dyno
from gateway.answercache import CACHE_HEADER

CACHE_BYTES = 16 * 1024 * 1024  # the gateway's default
CLIENTS = 32  # one of the sweep's client counts, to set the two side by side


def start_cached_stack(export_dir: Path, work: Path) -> tuple[Dyno, str]:
    """bench/stack.py's stack, the answer cache on."""
    return start_stack(export_dir, work, {"DYNOSERVE_ANSWER_CACHE_BYTES": str(CACHE_BYTES)})


def cache_step(
    export_dir: Path,
    work: Path,
    image_urls: Sequence[str],
    seconds: float,
    roots: dict[int, str],
) -> dict[str, Any]:
    """Each photo once (misses), then a keep-alive client and CLIENTS siege clients on hits."""
    proc, base = start_cached_stack(export_dir, work / "cache-stack")
    try:
        endpoint = f"{base}/v1/models/{MODEL}:predict"
        first = [_first_answer(endpoint, url) for url in image_urls]
        one = steps.sequential_latency(endpoint, image_urls[0], min(seconds, 10.0))
        urls = siege.url_file(work / "cache-urls.txt", endpoint, image_urls)
        roles = procstat.roles_under({proc.pid: "dynoserve", **roots}, ROLES)
        step = steps.run_step(urls, CLIENTS, seconds, procstat.Sampler(roles), work)
        counts = _counts(base)
    finally:
        proc.stop(timeout=40)
    return {
        "cache_bytes": CACHE_BYTES,
        "first": first,
        "one_client": one,
        "step": step,
        "metrics": counts,
        "all_hits": counts["misses"] == len(image_urls),
    }


def _first_answer(endpoint: str, url: str) -> str:
    """The header of a photo's first answer ('miss' unless the cache is not on)."""
    request = urllib.request.Request(
        endpoint,
        data=f'{{"image_url": "{url}"}}'.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return str(response.headers.get(CACHE_HEADER))


def _counts(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for name in ("hits", "misses"):
        metric = f"dynoserve_gateway_answer_cache_{name}_total"
        found = re.search(rf"^{metric} ([0-9.e+-]+)$", text, re.MULTILINE)
        counts[name] = float(found.group(1)) if found else 0.0
    return counts


def cache_lines(cache: dict[str, Any], sweep: dict[str, Any] | None) -> list[str]:
    """The report's paragraph: cached latency beside the uncached sweep's at the same load."""
    one, step = cache["one_client"], cache["step"]
    uncached = next((s for s in (sweep or {}).get("steps", []) if s["clients"] == CLIENTS), None)
    sweep_one = (sweep or {}).get("one_client", {})
    verdict = (
        "every request after each photo's first was a hit"
        if cache["all_hits"]
        else (
            f"{cache['metrics']['misses']:.0f} misses for {len(cache['first'])} photos, "
            f"{cache['metrics']['hits']:.0f} hits (a miss past a photo's first is a Predict more)"
        )
    )
    lines = [
        f"**answer cache** (a stack of its own, DYNOSERVE_ANSWER_CACHE_BYTES="
        f"{cache['cache_bytes']}; the sweep above ran with the cache off): the same photos "
        f"again; {verdict}.",
        "",
        "| | 1 keep-alive client p50 | clients | ok/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
        f"| cached (hits) | {one['p50_ms']} | {step['clients']} | {step['ok_per_s']} "
        f"| {step['p50_ms']} | {step['p99_ms']} |",
    ]
    if uncached is not None:
        lines.append(
            f"| uncached (the sweep) | {sweep_one.get('p50_ms')} | {uncached['clients']} "
            f"| {uncached['ok_per_s']} | {uncached['p50_ms']} | {uncached['p99_ms']} |"
        )
    return lines
