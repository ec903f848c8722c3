"""Environment settings of the launcher and the local server, read once in main()."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FLAGS_FILE = Path(__file__).resolve().parent / "model_server.flags"


@dataclass(frozen=True)
class Settings:
    """What the environment says; TF Serving's own flags carry everything else."""

    model_server_bin: str = ""
    """Path of stock tensorflow_model_server; empty means look it up on PATH."""
    use_local_server: bool = False
    """Force the local server even when a stock binary is found."""
    config_wait_seconds: float = 120.0
    """How long the launcher waits for --model_config_file to appear (sync writes it at boot)."""
    bind_host: str = "127.0.0.1"
    """Interface the local server binds its gRPC and REST ports to."""
    flags_file: str = str(DEFAULT_FLAGS_FILE)
    """Project default flags the launcher adds (empty: none)."""
    local_server_python: str = ""
    """Interpreter for the local server; empty: this one if it has TensorFlow, else .venv's."""
    model_server_threads: int | None = None
    """TensorFlow intra- and inter-op threads; None: the CPUs the cgroup quota allows; 0: TF's."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            model_server_bin=env.get("DYNOSERVE_MODEL_SERVER_BIN", ""),
            use_local_server=env.get("DYNOSERVE_MODEL_SERVER_LOCAL", "") in ("1", "true", "yes"),
            config_wait_seconds=float(env.get("DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS", "120")),
            bind_host=env.get("DYNOSERVE_MODEL_SERVER_HOST", "127.0.0.1"),
            flags_file=env.get("DYNOSERVE_MODEL_SERVER_FLAGS", str(DEFAULT_FLAGS_FILE)),
            local_server_python=env.get("DYNOSERVE_MODEL_SERVER_PYTHON", ""),
            model_server_threads=_threads(env.get("DYNOSERVE_MODEL_SERVER_THREADS", "")),
        )


def _threads(raw: str) -> int | None:
    """DYNOSERVE_MODEL_SERVER_THREADS: empty or `auto` means None (from the CPU quota)."""
    text = raw.strip().lower()
    if text in ("", "auto"):
        return None
    count = int(text)
    if count < 0:
        raise ValueError(f"DYNOSERVE_MODEL_SERVER_THREADS={raw!r} must be 0 or more")
    return count
