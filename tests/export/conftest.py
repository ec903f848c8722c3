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


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
    keras_file: tuple[Path, Any],
    h5_file: tuple[Path, Any],
    tf1_ckpt: tuple[Path, Any],
    labels4: Path,
) -> dict[str, Path]:
    """One export of each kind of classifier write_servable meets, by kind; read-only."""
    from export.checkpoint_types import LoadOptions
    from export.exporter import ExportRequest, export

    base = tmp_path_factory.mktemp("exported")
    tf1_load = LoadOptions(input_tensor="input:0", output_tensor="probs:0")
    sources_by_kind = {
        "keras3": (keras_file[0], LoadOptions(), "minus_one_to_one"),
        "tf_keras2_h5": (h5_file[0], LoadOptions(), "zero_to_one"),
        "tf1": (tf1_ckpt[0], tf1_load, "raw"),
    }
    return {
        kind: export(
            ExportRequest(
                checkpoint=checkpoint,
                name=kind,
                export_dir=base,
                labels_file=labels4,
                load=load,
                normalization=normalization,
            )
        ).path
        for kind, (checkpoint, load, normalization) in sources_by_kind.items()
    }
