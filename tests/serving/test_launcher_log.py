"""The launcher's log lines carry a timestamp, like sync's and the local server's (issue 11)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import VENV_PYTHON, python_env

_STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} serving\.launcher\] ")


def test_launcher_lines_start_with_a_timestamp(tmp_path: Path) -> None:
    env = {"DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS": "0.3", "DYNOSERVE_MODEL_SERVER_LOCAL": "1"}
    result = subprocess.run(
        [str(VENV_PYTHON), "-m", "serving", f"--model_config_file={tmp_path / 'missing.config'}"],
        env=python_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if "serving.launcher]" in line]
    assert len(lines) >= 2, result.stderr  # "waiting up to ..." and "... did not appear"
    for line in lines:
        assert _STAMPED.match(line), line
