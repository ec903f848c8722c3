"""Child processes for tests and benchmarks: interpreters, environment, start/poll/stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
GATEWAY_PYTHON = REPO_ROOT / ".venv-gateway" / "bin" / "python"


def wait_for(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child Python process of the project (repo on PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYNOSERVE_", "BUCKETEER_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ManagedProcess:
    """A child process whose output goes to a log file, stopped (SIGTERM, then SIGKILL) on exit.

    Use as a context manager; `log()` returns what it printed so far, for assertion messages.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env if env is not None else python_env()
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        """The child's process id (the process must have been started)."""
        if self.proc is None:
            raise RuntimeError(f"{self.argv[:3]} was never started")
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def wait_ready(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll `predicate`; fail early, with the log, if the process dies first."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.argv[:3]} exited early:\n{self.log()[-4000:]}")
            return predicate()

        try:
            wait_for(ready, timeout, what=" ".join(self.argv[:4]))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log ---\n{self.log()[-4000:]}") from exc

    def start_ready(
        self, predicate: Callable[[], bool], timeout: float = 60.0, stop_timeout: float = 15.0
    ) -> ManagedProcess:
        """Start, then wait until `predicate` holds; a process that never gets ready is stopped
        before the error propagates, so no caller leaks it."""
        self.start()
        try:
            self.wait_ready(predicate, timeout)
        except BaseException:
            self.stop(stop_timeout)
            raise
        return self

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def current_python() -> str:
    """The interpreter running the tests (the dev venv's)."""
    return sys.executable
