"""ManagedProcess.start_ready: a process that never gets ready is not left behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devtools.processes import ManagedProcess


def test_a_process_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    proc = ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
    with pytest.raises(TimeoutError):
        proc.start_ready(lambda: False, timeout=0.3, stop_timeout=5)
    assert not proc.alive()


def test_a_process_that_dies_early_fails_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    proc = ManagedProcess(argv, tmp_path / "log")
    with pytest.raises(RuntimeError, match="boom"):
        proc.start_ready(lambda: False, timeout=10)
    assert not proc.alive()


def test_a_ready_process_is_returned_running(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = ManagedProcess(argv, tmp_path / "log").start_ready(lambda: True)
    try:
        assert proc.alive()
    finally:
        proc.stop()
    assert not proc.alive()
