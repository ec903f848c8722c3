"""Environment settings of the launcher and the local server, read once in main()."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envsettings import EnvSettings, Parser, env, integer, number

DEFAULT_FLAGS_FILE = Path(__file__).resolve().parent / "model_server.flags"


def _threads(text: str) -> int | None:
    """`auto` means None (the launcher's auto_threads); else a count, 0 leaving it to TensorFlow."""
    return None if text.lower() == "auto" else integer(0).convert(text)


_THREADS = Parser("auto or an integer >= 0", _threads)


@dataclass(frozen=True)
class Settings(EnvSettings):
    """What the environment says; TF Serving's own flags carry everything else."""

    model_server_bin: str = env("DYNOSERVE_MODEL_SERVER_BIN", "")
    """Path of stock tensorflow_model_server; empty means look it up on PATH."""
    use_local_server: bool = env("DYNOSERVE_MODEL_SERVER_LOCAL", False)
    """Force the local server even when a stock binary is found."""
    config_wait_seconds: float = env("DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS", 120.0, number(0))
    """How long the launcher waits for --model_config_file to appear (sync writes it at boot)."""
    bind_host: str = env("DYNOSERVE_MODEL_SERVER_HOST", "127.0.0.1")
    """Interface the local server binds its gRPC and REST ports to."""
    flags_file: str = env("DYNOSERVE_MODEL_SERVER_FLAGS", str(DEFAULT_FLAGS_FILE), keep_blank=True)
    """Project default flags the launcher adds (empty: none)."""
    local_server_python: str = env("DYNOSERVE_MODEL_SERVER_PYTHON", "")
    """Interpreter for the local server; empty: this one if it has TensorFlow, else .venv's."""
    model_server_threads: int | None = env("DYNOSERVE_MODEL_SERVER_THREADS", None, _THREADS)
    """TensorFlow intra- and inter-op threads; None: the CPU quota, else at most 2 (measured); 0:
    TensorFlow's own count (nproc)."""
