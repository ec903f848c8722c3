"""Dynoserve as `make run` runs it (supervisord.conf: sync, model server, gateway), on loopback,
serving the benchmark model from a local export folder (sync's source when no bucket is set)."""

from __future__ import annotations

import contextlib
import re
import time
import urllib.request
from pathlib import Path

from devtools.dynostack import ROLES, Dyno, run_env
from devtools.net import free_port
from devtools.processes import REPO_ROOT, wait_for

MODEL = "mobilenet"
__all__ = ["MODEL", "ROLES", "gateway_busy", "stack_env", "start_stack", "wait_idle"]


def stack_env(
    export_dir: Path,
    work: Path,
    port: int,
    extra: dict[str, str] | None = None,
    root: Path = REPO_ROOT,
) -> dict[str, str]:
    """The variables `make run` sets, plus the two a loopback benchmark needs, plus `extra`;
    `root`: the checkout to run (bench/ab.py runs two)."""
    return run_env(
        work,
        {
            "PORT": str(port),
            "DYNOSERVE_RUN_DIR": str(work),
            "DYNOSERVE_EXPORT_DIR": str(export_dir),
            # The images come from nginx on 127.0.0.1, which the gateway refuses by default.
            "DYNOSERVE_FETCH_ALLOW_PRIVATE": "true",
            # The sweep repeats its 8 images: it measures the model, not the answer cache
            # (the cache step turns it on for a stack of its own).
            "DYNOSERVE_ANSWER_CACHE_BYTES": "0",
            **(extra or {}),
        },
        root,
    )


def start_stack(
    export_dir: Path, work: Path, extra: dict[str, str] | None = None, root: Path = REPO_ROOT
) -> tuple[Dyno, str]:
    """The dyno's process tree as `make run` starts it (devtools.dynostack), ready (/readyz);
    the dyno (its log in `work`) and its base URL; stopped if it never gets ready.
    `extra`: more environment variables (settings to change for a measurement); `root`: the
    checkout to run, from its own folder as `make run` does."""
    env = stack_env(export_dir, work, free_port(), extra, root)
    dyno = Dyno(env, name="dynoserve", work=work, cwd=root).start()
    try:
        dyno.wait_ready(timeout=300)
    except BaseException:
        dyno.stop()
        raise
    return dyno, dyno.base


# Gauges of work the gateway holds; a gateway without one of them (older or newer) reads as 0.
BUSY_GAUGES = (
    "dynoserve_gateway_in_flight_requests",
    "dynoserve_gateway_queue_length",
    "dynoserve_gateway_fetches_in_progress",
)


def gateway_busy(base: str) -> float:
    """Requests the gateway holds now (in prediction, queued, fetching), from /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for name in BUSY_GAUGES:
        match = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.MULTILINE)
        total += float(match.group(1)) if match else 0.0
    return total


def wait_idle(base: str, timeout: float = 60.0) -> float:
    """Wait until the gateway holds no request (work left by a step's abandoned clients would
    otherwise fall into the next step); seconds waited. Bounded: gives up after `timeout`."""
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: gateway_busy(base) == 0, timeout, interval=0.2, what="an idle gateway")
    return round(time.monotonic() - started, 1)
