"""Keras model files: `.keras` archives (Keras 3) and legacy `.h5` files (tf.keras 1.x/2.x).

A `.h5` is read with tf_keras, the tf.keras 2 line, because that is the code that wrote it:
its layer semantics and weight order are read back exactly, without Keras 3's legacy shims.
A weights-only `.h5` (`model.save_weights`, or ModelCheckpoint(save_weights_only=True)) is
loaded into the model --architecture describes; `*.weights.h5` is Keras 3's own weights file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from export.architectures import build_described
from export.checkpoints import Kind, LoadedModel, LoadOptions
from export.errors import UnreadableCheckpoint, brief

# What Keras raises for a file that is not (quite) a model: bad archive, bad HDF5, unknown layer.
_LOAD_ERRORS = (ValueError, OSError, TypeError, KeyError, AttributeError, zipfile.BadZipFile)


def load_keras_file(kind: Kind, path: Path, options: LoadOptions) -> LoadedModel:
    """Load a whole Keras model (architecture and weights) without its training config."""
    if kind == Kind.H5 and _weights_only(path):
        model = _load_weights_into_architecture(path, options)
        return LoadedModel(model, kind, Path(path), keras_input_size(model, path))
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


def _weights_only(path: Path) -> bool:
    """A full-model HDF5 file carries its architecture in the `model_config` attribute."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "model_config" not in handle.attrs
    except OSError as exc:
        raise UnreadableCheckpoint(f"{path}: not a readable HDF5 file: {brief(exc)}") from exc


def _load_weights_into_architecture(path: Path, options: LoadOptions) -> Any:
    # Keras 3 names its weight files *.weights.h5 and cannot read tf.keras 2's layout, nor
    # the other way round: the file name decides which Keras builds the architecture.
    keras3 = path.name.endswith(".weights.h5")
    model = build_described(options, tf_keras=not keras3, holder=f"{path.name}")
    try:
        model.load_weights(str(path))
    except _LOAD_ERRORS as exc:
        raise UnreadableCheckpoint(
            f"{path}: its weights do not fit the described architecture: {brief(exc)}"
        ) from exc
    return model


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
