"""`make labels` refusing a label: the tool exits 65 (64 for a malformed one) and says so; make
exits 2 for any failed recipe, and shows the tool's code as "Error 65" (README, "Versions and
labels"). Runs the real Makefile target, without its `setup` prerequisite (-o setup)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sync.errors import EX_DATAERR, EX_USAGE

ROOT = Path(__file__).resolve().parents[2]


def _env(exports: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETEER_", "DYNOSERVE_"))}
    return env | {"DYNOSERVE_EXPORT_DIR": str(exports)}


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    """An export folder with version 1 of `shapes` (a complete version: its saved_model.pb)."""
    version = tmp_path / "shapes" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    ("labels", "code"),
    [("stable=9", EX_DATAERR), ("stable", EX_USAGE)],  # not published / malformed
)
def test_make_labels_shows_the_tools_exit_code(exports: Path, labels: str, code: int) -> None:
    direct = subprocess.run(
        [sys.executable, "-m", "sync.labels", "--name", "shapes", labels],
        cwd=ROOT, env=_env(exports), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert direct.returncode == code, direct.stderr
    assert f"labels not changed (exit {code})" in direct.stderr
    target = ["labels", "NAME=shapes", f"LABELS={labels}"]
    made = subprocess.run(
        ["make", "--no-print-directory", "-o", "setup", *target],
        cwd=ROOT, env=_env(exports), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 2, made.stderr  # make's own status for a failed recipe
    assert f"labels not changed (exit {code})" in made.stderr
    assert f"Error {code}" in made.stderr
    assert not (exports / "shapes" / "dynoserve-model.json").exists()  # nothing written
