"""`python -m serving [TF Serving flags]`: run stock tensorflow_model_server if there is one,
else the local server, with the same flags.

The project's flags and config files live in serving/: every flag of serving/model_server.flags
that the command line does not set is added (the command line wins;
DYNOSERVE_MODEL_SERVER_FLAGS names another file, empty for none).
It then waits (bounded) for --model_config_file to exist, because sync writes that file at boot
and stock TF Serving exits at once when it is missing. The stock binary gets the flags in its
own `--name=value` form; the process is replaced (exec), so supervisord signals the server itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from serving import flags
from serving.settings import Settings

log = logging.getLogger("serving.launcher")

STOCK_BINARY = "tensorflow_model_server"
DEV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
EXIT_CONFIG_MISSING = 3


def find_stock_binary(settings: Settings) -> str | None:
    """DYNOSERVE_MODEL_SERVER_BIN, else tensorflow_model_server on PATH, else None."""
    if settings.use_local_server:
        return None
    if settings.model_server_bin:
        if os.access(settings.model_server_bin, os.X_OK):
            return settings.model_server_bin
        log.warning("DYNOSERVE_MODEL_SERVER_BIN=%s is not executable", settings.model_server_bin)
        return None
    return shutil.which(STOCK_BINARY)


def wait_for_file(path: str, timeout: float, interval: float = 0.2) -> bool:
    """True once `path` exists; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def local_server_python(settings: Settings) -> str:
    """An interpreter with TensorFlow: the configured one, this one, or the repository's .venv.

    supervisord may run the launcher with the gateway's interpreter, which has no TensorFlow.
    """
    if settings.local_server_python:
        return settings.local_server_python
    if importlib.util.find_spec("tensorflow") is not None or not DEV_PYTHON.exists():
        return sys.executable
    return str(DEV_PYTHON)


def command(argv: Sequence[str], settings: Settings) -> list[str]:
    """The argv to exec: the stock binary with canonical flags, or the local server."""
    binary = find_stock_binary(settings)
    if binary is not None:
        return [binary, *flags.canonical_argv(argv)]
    return [local_server_python(settings), "-m", "serving.local", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s] %(message)s")
    settings = Settings.from_env()
    args = list(sys.argv[1:] if argv is None else argv)
    if settings.flags_file:
        args = flags.with_defaults(args, flags.read_flags_file(settings.flags_file))
    options = flags.parse_or_exit(args, "python -m serving")
    if options.model_config_file and not os.path.exists(options.model_config_file):
        log.info(
            "waiting up to %.0fs for %s", settings.config_wait_seconds, options.model_config_file
        )
        if not wait_for_file(options.model_config_file, settings.config_wait_seconds):
            log.error("%s did not appear; not starting the model server", options.model_config_file)
            return EXIT_CONFIG_MISSING
    argv_to_run = command(args, settings)
    log.info("starting %s", " ".join(argv_to_run))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv_to_run[0], argv_to_run)  # noqa: S606 - replacing ourselves is the point
    return 0  # not reached
