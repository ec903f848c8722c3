"""Image hosts as the internet has them, against the running stack (bench/slowhost.py serves).

- **internet mode**: siege posting `image_url`s whose host answers after 0, 100 or 500 ms
  (+-20 % jitter), at client counts large enough to keep the model busy while requests wait on
  the host. By Little's law a closed loop of N clients doing X requests/s with R s per request
  has N = X x R: to keep the loopback best X when every request spends d more seconds on the
  fetch, N must grow by X x d (X = 100 ok/s and d = 0.5 s: 50 more clients than the ~32 that
  saturate the model on loopback, so about 82; the sweep goes to 128). The run records the
  need computed from its own 0 ms numbers next to the counts it used.
- **slow-URL flood**: one client keeps 40 requests in flight whose host sends the body one
  byte every 0.5 s for 6.5 s (inside the gateway's 8 s fetch budget) while 4 other clients
  upload their image as base64 JSON (no fetch at all); the uploaders alone first, for scale.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadclient, procstat, siege, steps

DELAYS_MS = (0, 100, 500)
JITTER = 0.2  # each delay is uniform in delay x (1 +- JITTER), drawn per request
CLIENTS = (32, 64, 128)
QUICK_CLIENTS = (128,)

Sampling = Callable[[], procstat.Sampler]
Settle = Callable[[], float]  # waits until the gateway holds no request; seconds waited


def delayed_urls(host_base: str, photos: Sequence[Path], delay_ms: int) -> list[str]:
    return [f"{host_base}/delay/{delay_ms}/{p.name}" for p in photos]


def internet_mode(
    endpoint: str,
    host_base: str,
    photos: Sequence[Path],
    clients: Sequence[int],
    seconds: float,
    sampling: Sampling,
    settle: Settle,
    work: Path,
    delays_ms: Sequence[int] = DELAYS_MS,
) -> dict[str, Any]:
    """One siege step per (client count, delay), delays interleaved within each client count
    so a change in the shared machine's load falls on every delay alike; each step starts
    once the gateway has finished what the previous step's clients left it."""
    results: list[dict[str, Any]] = []
    for count in clients:
        for delay in delays_ms:
            folder = work / f"internet-{delay}ms"
            folder.mkdir(parents=True, exist_ok=True)
            urls = siege.url_file(
                folder / "urls.txt", endpoint, delayed_urls(host_base, photos, delay)
            )
            waited = settle()
            record = steps.run_step(urls, count, seconds, sampling(), folder)
            results.append({"delay_ms": delay, **record, "idle_wait_s": waited})
            print(
                f"internet {delay:3d} ms: {count:3d} clients  {record['ok_per_s']:7.1f} ok/s  "
                f"p50 {record['p50_ms']}  p99 {record['p99_ms']}  failed {record['failed']}"
            )
    return {
        "delays_ms": list(delays_ms),
        "jitter": JITTER,
        "clients": list(clients),
        "steps": results,
        "clients_needed": clients_needed(results, delays_ms),
    }


def clients_needed(steps_: Sequence[dict[str, Any]], delays_ms: Sequence[int]) -> dict[str, int]:
    """Little's law: clients that keep the best 0 ms throughput X when each request takes d
    seconds longer than at that step (mean latency R there): ceil(X x (R + d))."""
    loopback = [s for s in steps_ if s["delay_ms"] == 0 and s["ok_per_s"]]
    if not loopback:
        return {}
    best = max(loopback, key=lambda s: s["ok_per_s"])
    rate, latency_s = best["ok_per_s"], (best["mean_ms"] or 0) / 1000
    return {str(d): math.ceil(rate * (latency_s + d / 1000)) for d in delays_ms}


@dataclass(frozen=True)
class FloodPlan:
    """The flood step's sizes (the issue's by default; tests shrink them)."""

    requests: int = 40
    dribble_s: float = 6.5
    uploaders: int = 4
    seconds: float = 20.0
    calm_s: float = 5.0
    head_start_s: float = 1.0  # the flood's requests are all in flight before uploads begin


QUICK_FLOOD = FloodPlan(seconds=8.0, calm_s=3.0)

# Logical clients by X-Forwarded-For: the flooder first, then the uploaders.
FLOODER = 0


def flood(
    endpoint: str,
    host_base: str,
    photo: Path,
    plan: FloodPlan,
    sampling: Sampling,
    settle: Settle,
) -> dict[str, Any]:
    """Uploaders alone, then the same uploaders while one client floods slow URLs."""
    slow = json.dumps({"image_url": f"{host_base}/dribble/{plan.dribble_s:g}/{photo.name}"})
    upload = json.dumps({"image_b64": base64.b64encode(photo.read_bytes()).decode()}).encode()
    addresses = [loadclient.client_address(FLOODER + 1 + i) for i in range(plan.uploaders)]
    waited = settle()
    calm = loadclient.run_for(
        loadclient.KeepAliveLoad.posting(endpoint, upload, plan.uploaders, addresses), plan.calm_s
    )
    flooder = loadclient.KeepAliveLoad.posting(
        endpoint, slow.encode(), plan.requests, [loadclient.client_address(FLOODER)]
    )
    runner, sampler = steps.RunnerCpu(), sampling().start()
    flooder.start()
    time.sleep(plan.head_start_s)
    during = loadclient.run_for(
        loadclient.KeepAliveLoad.posting(endpoint, upload, plan.uploaders, addresses), plan.seconds
    )
    flooded = flooder.finish()
    usage = sampler.stop()
    return {
        "plan": plan.__dict__,
        **runner.finish(usage),
        "idle_wait_s": waited,
        "calm": calm,
        "uploaders": during,
        "flood": flooded,
        "rss_mb": usage.rss_mb,
        "cpu_s": {role: round(s, 2) for role, s in usage.cpu_s.items()},
    }
