"""Fixtures of the export tests: each expensive artefact is built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.export import sources


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny servable written by export.testing, shared read-only by the tests."""
    from export.testing import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("repo"), "tiny", 1)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_version: Path) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(tiny_version))


@pytest.fixture(scope="session")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sources")


@pytest.fixture(scope="session")
def keras_file(src: Path) -> tuple[Path, Any]:
    return sources.write_keras(src)


@pytest.fixture(scope="session")
def h5_file(src: Path) -> tuple[Path, Any]:
    return sources.write_h5(src)


@pytest.fixture(scope="session")
def tf2_mobilenet(src: Path) -> tuple[Path, Any]:
    return sources.write_tf2_mobilenet(src)


@pytest.fixture(scope="session")
def tf1_ckpt(src: Path) -> tuple[Path, Any]:
    return sources.write_tf1(src)


@pytest.fixture(scope="session")
def labels4(src: Path) -> Path:
    return sources.write_labels(src)
