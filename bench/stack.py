"""Dynoserve as `make run` runs it (supervisord.conf: sync, model server, gateway), on loopback,
serving the benchmark model from a local export folder (sync's source when no bucket is set)."""

from __future__ import annotations

from pathlib import Path

from devtools.net import free_port, http_ok
from devtools.processes import GATEWAY_PYTHON, VENV_PYTHON, ManagedProcess, python_env

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


def stack_env(export_dir: Path, work: Path, port: int) -> dict[str, str]:
    """The variables `make run` sets, plus the two a loopback benchmark needs."""
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
        }
    )


def start_stack(export_dir: Path, work: Path) -> tuple[ManagedProcess, str]:
    """The dyno's process tree as `make run` starts it, ready (/readyz); process and base URL."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = ManagedProcess(
        entrypoint(), work / "dynoserve.log", env=stack_env(export_dir, work, port)
    )
    base = f"http://127.0.0.1:{port}"
    proc.start_ready(lambda: http_ok(base + "/readyz"), timeout=300, stop_timeout=30)
    return proc, base
