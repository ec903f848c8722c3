"""Helpers shared by the test packages: free ports, readiness polls, managed subprocesses.

They live in devtools/ (shared with bench/); these names stay importable from here.
"""

from __future__ import annotations

from devtools.net import free_port, http_json, http_ok, port_open
from devtools.processes import (
    GATEWAY_PYTHON,
    REPO_ROOT,
    VENV_PYTHON,
    ManagedProcess,
    current_python,
    python_env,
    wait_for,
)

__all__ = [
    "GATEWAY_PYTHON",
    "REPO_ROOT",
    "VENV_PYTHON",
    "ManagedProcess",
    "current_python",
    "free_port",
    "http_json",
    "http_ok",
    "port_open",
    "python_env",
    "wait_for",
]
