"""Dynoserve as `make run` runs it (supervisord.conf: sync, model server, gateway), on loopback,
serving the benchmark model from a local export folder (sync's source when no bucket is set)."""

from __future__ import annotations

import contextlib
import re
import time
import urllib.request
from pathlib import Path

from devtools.net import free_port, http_ok
from devtools.processes import GATEWAY_PYTHON, VENV_PYTHON, ManagedProcess, python_env, wait_for

MODEL = "mobilenet"

# Process roles by command line, for CPU and memory accounting (bench.procstat).
ROLES = (
    ("-m gateway", "gateway"),
    ("-m serving", "model server"),
    ("-m sync", "sync"),
    ("supervisord", "supervisord"),
    ("-m dyno", "entrypoint"),
)


def entrypoint() -> list[str]:
    """The command `make run` starts: supervisord behind the log-copying entrypoint."""
    return [str(GATEWAY_PYTHON), "-m", "dyno"]


def stack_env(
    export_dir: Path, work: Path, port: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The variables `make run` sets, plus the two a loopback benchmark needs, plus `extra`."""
    return python_env(
        {
            "PORT": str(port),
            "DYNOSERVE_RUNTIME_PYTHON": str(GATEWAY_PYTHON),
            "DYNOSERVE_MODEL_PYTHON": str(VENV_PYTHON),
            "DYNOSERVE_MODEL_BASE_PATH": str(work / "models"),
            "DYNOSERVE_RUN_DIR": str(work),
            "DYNOSERVE_MODEL_SERVER_GRPC_PORT": str(free_port()),
            "DYNOSERVE_MODEL_SERVER_REST_PORT": str(free_port()),
            "DYNOSERVE_EXPORT_DIR": str(export_dir),
            # The images come from nginx on 127.0.0.1, which the gateway refuses by default.
            "DYNOSERVE_FETCH_ALLOW_PRIVATE": "true",
            "DYNOSERVE_BIND_HOST": "127.0.0.1",
            # The sweep repeats its 8 images: it measures the model, not the answer cache
            # (the cache step turns it on for a stack of its own).
            "DYNOSERVE_ANSWER_CACHE_BYTES": "0",
            **(extra or {}),
        }
    )


def start_stack(
    export_dir: Path, work: Path, extra: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    """The dyno's process tree as `make run` starts it, ready (/readyz); process and base URL.
    `extra`: more environment variables (settings to change for a measurement)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = stack_env(export_dir, work, port, extra)
    proc = ManagedProcess(entrypoint(), work / "dynoserve.log", env=env)
    base = f"http://127.0.0.1:{port}"
    proc.start_ready(lambda: http_ok(base + "/readyz"), timeout=300, stop_timeout=30)
    return proc, base


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
