"""`python -m serving [TF Serving flags]`: run stock tensorflow_model_server if there is one,
else the local server, with the same flags.

The project's flags and config files live in serving/: every flag of serving/model_server.flags
that the command line does not set is added (the command line wins;
DYNOSERVE_MODEL_SERVER_FLAGS names another file, empty for none).
It then waits (bounded) for --model_config_file to exist, because sync writes that file at boot
and stock TF Serving exits at once when it is missing. The stock binary gets the flags in its
own `--name=value` form; the process is replaced (exec), so supervisord signals the server itself.

Two things a dyno needs that TF Serving does not do by itself:
- SIGTERM is ignored across the exec. Heroku sends SIGTERM to every process of the dyno at once
  and stock TF Serving dies on it at once (tensorflow/serving#1853) while the gateway still
  drains requests that need it; supervisord stops the server with SIGINT after the gateway.
- TensorFlow sizes its thread pools from the CPUs the process may run on (`nproc`), which on a
  dyno is not the dyno's share. The launcher passes --tensorflow_intra_op_parallelism and
  --tensorflow_inter_op_parallelism (DYNOSERVE_MODEL_SERVER_THREADS, else `auto_threads`: the
  cgroup's CPU quota when it has one, else at most SHARED_CPU_THREADS) with the other project
  defaults, unless the command line sets them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from envsettings import exit_on_error
from serving import flags
from serving.settings import Settings

log = logging.getLogger("serving.launcher")

STOCK_BINARY = "tensorflow_model_server"
DEV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
EXIT_CONFIG_MISSING = 3
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# TensorFlow's threads when the cgroup sets no CPU quota. Heroku's Standard dynos share the
# host's CPUs by weight (cpu.shares: no quota to read) and `nproc` shows the host's count,
# several times the dyno's share. Measured with bench/cpu_shares.py (docs/sizing.md, "Threads on
# a shared CPU"): 8 threads on 2 shared CPUs cost ~30 % more CPU per image than 2 (pool threads
# spin) and served 0.57-0.88x their images/s; 4 cost 10-15 % more, for speed only when CPUs sat
# idle; 1 thread, at a quarter of the host beside a busy neighbour, answered a lone caller half
# as fast as 2. Heroku rates a Standard dyno at most ~1.3 CPUs (Standard-2X "8x" against
# Performance-M's two CPUs at "12x"): 2 threads can use all of it.
SHARED_CPU_THREADS = 2


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _v2_limit(folder: Path) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("max 100000" or "<quota> <period>")."""
    quota, _, period = (_read(folder / "cpu.max") or "max").strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _v1_limit(folder: Path) -> float | None:
    """CPUs allowed by a cgroup v1 CFS quota (-1: none)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def _with_ancestors(base: Path, cgroup_path: str) -> list[Path]:
    """The cgroup folder and every parent up to the hierarchy's root: a parent's quota binds too."""
    folder = base / cgroup_path.strip("/")
    return [folder, *[p for p in folder.parents if p.is_relative_to(base)]]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs the process's cgroup quota allows (v2 cpu.max, v1 cfs quota); None when unlimited."""
    limits: list[float | None] = []
    for line in (_read(proc_cgroup) or "0::/").splitlines():
        controllers, _, path = line.partition(":")[2].partition(":")
        if not controllers:
            limits += [_v2_limit(f) for f in _with_ancestors(root, path)]
        elif "cpu" in controllers.split(","):
            limits += [_v1_limit(f) for f in _with_ancestors(root / controllers, path)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def schedulable_cpus() -> int:
    """The CPUs this process may run on (`nproc`): what TensorFlow sizes its pools from."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count for TensorFlow's pools and why, for the launcher's log line."""

    count: int
    reason: str


def auto_threads(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> ThreadChoice:
    """The cgroup's CPU quota rounded up when it has one (a hard cap: threads beyond it only
    wait for the next period); else at most SHARED_CPU_THREADS, because without a quota the
    CPUs `nproc` shows may be a shared host's. Never more than `nproc`."""
    cpus = schedulable_cpus()
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        count = max(1, min(cpus, math.ceil(limit)))
        return ThreadChoice(count, f"CPU quota {limit:g}, nproc {cpus}")
    count = min(cpus, SHARED_CPU_THREADS)
    return ThreadChoice(count, f"no CPU quota, nproc {cpus}: at most {SHARED_CPU_THREADS}")


def thread_choice(
    settings: Settings, root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> ThreadChoice | None:
    """DYNOSERVE_MODEL_SERVER_THREADS, else auto_threads; None for 0 (TensorFlow's own)."""
    threads = settings.model_server_threads
    if threads == 0:
        return None
    if threads is not None:
        return ThreadChoice(threads, "DYNOSERVE_MODEL_SERVER_THREADS")
    return auto_threads(root, proc_cgroup)


def thread_flags(choice: ThreadChoice | None) -> list[str]:
    """TensorFlow's thread-pool flags for `choice`; none for None (TensorFlow then sizes its
    pools from `nproc`)."""
    if choice is None:
        return []
    return [
        f"--tensorflow_intra_op_parallelism={choice.count}",
        f"--tensorflow_inter_op_parallelism={choice.count}",
    ]


def project_defaults(settings: Settings, threads: ThreadChoice | None) -> list[str]:
    """Flags added when the command line does not set them: the flags file's and the thread
    counts. DYNOSERVE_MODEL_SERVER_FLAGS='' turns both off, unless the thread count is set."""
    if not settings.flags_file:
        return thread_flags(threads) if settings.model_server_threads is not None else []
    return [*flags.read_flags_file(settings.flags_file), *thread_flags(threads)]


def command(argv: Sequence[str], settings: Settings) -> list[str]:
    """The argv to exec: the stock binary with canonical flags, or the local server."""
    binary = find_stock_binary(settings)
    if binary is not None:
        return [binary, *flags.canonical_argv(argv)]
    return [local_server_python(settings), "-m", "serving.local", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s] %(message)s"
    )
    with exit_on_error("python -m serving"):
        settings = Settings.from_env()
    args = list(sys.argv[1:] if argv is None else argv)
    threads = thread_choice(settings)
    args = flags.with_defaults(args, project_defaults(settings, threads))
    if threads is not None and set(thread_flags(threads)) & set(args):
        log.info("TensorFlow threads: %d (%s)", threads.count, threads.reason)
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
    # Survives exec: the server outlives the gateway's drain; supervisord stops it with SIGINT.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.execv(argv_to_run[0], argv_to_run)  # noqa: S606 - replacing ourselves is the point
    return 0  # not reached
