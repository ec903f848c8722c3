"""One benchmark step: siege at N clients against one system while its processes are measured."""

from __future__ import annotations

import http.client
import json
import math
import resource
import statistics
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import procstat, siege

# A step warns when processes outside the measured ones took more than this share of the CPUs.
BUSY_WARNING_SHARE = 0.05


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_stats_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {
        "mean_ms": round(1000 * statistics.fmean(latencies_s), 1),
        "p50_ms": round(1000 * percentile(latencies_s, 0.50), 1),
        "p95_ms": round(1000 * percentile(latencies_s, 0.95), 1),
        "p99_ms": round(1000 * percentile(latencies_s, 0.99), 1),
    }


def run_step(
    urls: Path, clients: int, seconds: float, sampler: procstat.Sampler, workdir: Path
) -> dict[str, Any]:
    """siege at `clients` for `seconds`; throughput, latency, failures, CPU and RSS per role."""
    runner0, children0 = _rusage(resource.RUSAGE_SELF), _rusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    sampler.start()
    result = siege.run(urls, clients, seconds, workdir)
    usage = sampler.stop()
    wall = time.monotonic() - started
    usage.extra_cpu_s = {
        "siege": _rusage(resource.RUSAGE_CHILDREN) - children0,
        "bench runner": _rusage(resource.RUSAGE_SELF) - runner0,
    }
    return step_record(clients, result, usage, wall)


def settled_step(
    urls: Path,
    clients: int,
    seconds: float,
    roles: procstat.Roles,
    workdir: Path,
    settle: Callable[[], float],
) -> dict[str, Any]:
    """run_step once `settle` returns, its seconds kept as "settled_s": siege abandons one
    request per client at a step's end, the system still answers the ones it admitted, and
    that work would otherwise fall into the next step."""
    settled_s = settle()
    record = run_step(urls, clients, seconds, procstat.Sampler(roles), workdir)
    return {**record, "settled_s": settled_s}


def step_record(
    clients: int, result: siege.SiegeResult, usage: procstat.StepUsage, wall_s: float
) -> dict[str, Any]:
    """The JSON record of one step (also used by the tests on canned siege output)."""
    elapsed = result.elapsed_s or wall_s
    total = sum(result.statuses.values())
    cpu = {**usage.cpu_s, **usage.extra_cpu_s}
    per_1000 = {role: round(1000 * s / total, 2) if total else None for role, s in cpu.items()}
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": total,
        "ok": result.ok,
        "transactions_per_s": round(total / elapsed, 2) if elapsed else 0.0,
        "ok_per_s": round(result.ok / elapsed, 2) if elapsed else 0.0,
        **latency_stats_ms(result.latencies_s),
        "failures": result.failures,
        "failed": sum(result.failures.values()),
        "cpu_s_per_1000_requests": per_1000,
        "rss_mb": usage.rss_mb,
        "processes": usage.processes,
        **busy_share(usage, wall_s),
        **_hung(result, usage, wall_s),
    }


def _hung(result: siege.SiegeResult, usage: procstat.StepUsage, wall_s: float) -> dict[str, Any]:
    if not result.hung:
        return {}
    note = (
        "siege never stopped (JoeDog/siege#66) and was killed: counts from its per-request "
        "lines over the step's seconds"
    )
    busy = busy_share(usage, wall_s).get("warning")
    return {"siege_hung": True, "warning": f"{busy}; {note}" if busy else note}


def busy_share(usage: procstat.StepUsage, wall_s: float) -> dict[str, Any]:
    """The share of the CPUs processes outside the measured ones took, and a warning when it
    is over BUSY_WARNING_SHARE (the step's numbers are then not to be quoted)."""
    other_share = usage.other_cpu_s / (usage.cpus * wall_s) if wall_s else 0.0
    found: dict[str, Any] = {"other_cpu_share": round(other_share, 3)}
    if other_share > BUSY_WARNING_SHARE:
        found["warning"] = (
            f"other processes used {usage.other_cpu_s:.1f} CPU s "
            f"({100 * other_share:.0f}% of {usage.cpus} CPUs) during this step"
        )
    return found


class RunnerCpu:
    """CPU seconds this process (the bench runner and its client threads) uses from now on,
    so a step measured by the runner's own clients does not count them as "other"."""

    def __init__(self) -> None:
        self.started = _rusage(resource.RUSAGE_SELF)
        self.wall0 = time.monotonic()

    def finish(self, usage: procstat.StepUsage) -> dict[str, Any]:
        """Add the runner's CPU to `usage`; the busy share over the wall time since start."""
        usage.extra_cpu_s["bench runner"] = _rusage(resource.RUSAGE_SELF) - self.started
        return busy_share(usage, time.monotonic() - self.wall0)


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def sequential_latency(
    endpoint: str, image_url: str, seconds: float, at_least: int = 30
) -> dict[str, Any]:
    """One keep-alive client posting back to back: millisecond-precise 1-client percentiles
    (siege reports each request in 10 ms steps)."""
    parts = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    body = json.dumps({"image_url": image_url}).encode()
    headers = {"Content-Type": "application/json"}
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline or len(samples) < at_least:
            started = time.perf_counter()
            conn.request("POST", parts.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"{endpoint} answered {response.status}: {payload[:300]!r}")
            samples.append(time.perf_counter() - started)
    finally:
        conn.close()
    return {"requests": len(samples), **latency_stats_ms(samples)}
