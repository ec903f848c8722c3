"""Fixtures every test package shares: a clean environment for each test, a real S3 API server,
a real HTTP image server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.imagehost import ImageServer, serving_images
from tests.support import VENV_PYTHON, ManagedProcess, free_port, port_open, python_env

# Variables the project reads. Tests set what they need; nothing leaks in from the shell.
_PROJECT_PREFIXES = ("DYNOSERVE_", "BUCKETEER_", "AWS_")
_PROJECT_NAMES = ("PORT",)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_PROJECT_PREFIXES) or name in _PROJECT_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real S3 API server (moto in server mode) on loopback, shared by the session;
    tests keep apart by using buckets of their own."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    argv = [str(VENV_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with ManagedProcess(argv, log, env=python_env()) as server:
        server.wait_ready(lambda: port_open(port))
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    """A loopback HTTP server; tests add the paths and bodies they need."""
    with serving_images() as server:
        yield server
