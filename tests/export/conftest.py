"""Fixtures of the export tests: each expensive artefact is built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny servable written by export.testing, shared read-only by the tests."""
    from export.testing import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("repo"), "tiny", 1)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_version: Path) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(tiny_version))
