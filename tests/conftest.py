"""Fixtures every test package shares: a clean environment for each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Variables the project reads. Tests set what they need; nothing leaks in from the shell.
_PROJECT_PREFIXES = ("DYNOSERVE_", "BUCKETEER_", "AWS_")
_PROJECT_NAMES = ("PORT",)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_PROJECT_PREFIXES) or name in _PROJECT_NAMES:
            monkeypatch.delenv(name, raising=False)
    yield
