"""`python -m dyno` on its own: what it does when supervisord cannot start, and its FIFO."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from dyno.entrypoint import FIFO_NAME
from tests.support import GATEWAY_PYTHON, python_env

pytestmark = pytest.mark.slow


def run_entrypoint(run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`python -m dyno` without the image's variables: supervisord refuses to start."""
    env = python_env({"DYNOSERVE_RUN_DIR": str(run_dir)})
    argv = [str(GATEWAY_PYTHON), "-m", "dyno"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_supervisord_that_cannot_start_ends_the_entrypoint_with_its_status() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run" / "deep"  # missing: the entrypoint makes it
        # supervisord.conf needs the image's variables; without them supervisord refuses.
        done = run_entrypoint(run_dir)
        assert done.returncode != 0
        assert "ENV_DYNOSERVE_" in done.stdout + done.stderr  # supervisord's own message
        assert run_dir.is_dir()
        assert not (run_dir / FIFO_NAME).exists(), "the FIFO is removed on exit"


def test_a_stale_fifo_from_a_killed_run_is_replaced() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch)
        os.mkfifo(run_dir / FIFO_NAME)
        done = run_entrypoint(run_dir)
        assert "File exists" not in done.stderr
        assert "ENV_DYNOSERVE_" in done.stdout + done.stderr
