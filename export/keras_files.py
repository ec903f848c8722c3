"""Keras model files: `.keras` archives (Keras 3) and legacy `.h5` files (tf.keras 1.x/2.x).

A `.h5` is read with tf_keras, the tf.keras 2 line, because that is the code that wrote it:
its layer semantics and weight order are read back exactly, without Keras 3's legacy shims.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from export.checkpoints import Kind, LoadedModel
from export.errors import UnreadableCheckpoint, brief

# What Keras raises for a file that is not (quite) a model: bad archive, bad HDF5, unknown layer.
_LOAD_ERRORS = (ValueError, OSError, TypeError, KeyError, AttributeError, zipfile.BadZipFile)


def load_keras_file(kind: Kind, path: Path) -> LoadedModel:
    """Load a whole Keras model (architecture and weights) without its training config."""
    try:
        if kind == Kind.H5:
            import tf_keras

            model = tf_keras.models.load_model(str(path), compile=False)
        else:
            import keras

            model = keras.models.load_model(str(path), compile=False)
    except _LOAD_ERRORS as exc:
        raise UnreadableCheckpoint(
            f"{path}: cannot load it as a {kind} model: {brief(exc)}"
        ) from exc
    return LoadedModel(
        classifier=model, kind=kind, path=Path(path), input_size=keras_input_size(model, path)
    )


def keras_input_size(model: Any, source: Path) -> tuple[int, int] | None:
    """(H, W) of a single-image-input model, or None when H and W are dynamic."""
    shape = model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            raise UnreadableCheckpoint(f"{source}: the model has {len(shape)} inputs; need one")
        shape = shape[0]
    if len(shape) != 4 or shape[-1] != 3:
        raise UnreadableCheckpoint(
            f"{source}: the model input is {tuple(shape)}; an RGB classifier takes (N, H, W, 3)"
        )
    height, width = shape[1], shape[2]
    return (int(height), int(width)) if height and width else None
