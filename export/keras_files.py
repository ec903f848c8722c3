"""Keras model files: `.keras` archives (Keras 3) and `.h5` files (Keras 3, tf.keras 1.x/2.x).

An `.h5` is read by the Keras that wrote it, as its `keras_version` attribute says: tf_keras
(the tf.keras 2 line) for 1.x/2.x files, so their layer semantics and weight order are read
back exactly, without Keras 3's legacy shims; Keras 3 for its own `.h5` files, whose configs
tf_keras cannot parse (`batch_shape`). If that Keras fails, the other one is tried, and the
error names both attempts. A weights-only `.h5` (`model.save_weights`, or
ModelCheckpoint(save_weights_only=True)) is loaded into the model --architecture describes;
`*.weights.h5` is Keras 3's own weights file.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export.architectures import build_described
from export.checkpoint_types import Kind, LoadedModel, LoadOptions
from export.errors import UnreadableCheckpoint, brief

# What Keras raises for a file that is not (quite) a model: bad archive, bad HDF5, unknown layer.
_LOAD_ERRORS = (ValueError, OSError, TypeError, KeyError, AttributeError, zipfile.BadZipFile)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

Loader = Callable[[Path], Any]


def load_keras_file(kind: Kind, path: Path, options: LoadOptions) -> LoadedModel:
    """Load a whole Keras model (architecture and weights) without its training config.

    `kind` KERAS on an HDF5 file (`--kind keras model.h5`) means "read it with Keras 3 first".
    """
    path = Path(path)
    if kind == Kind.H5 or _is_hdf5(path):
        model = _load_h5(path, options, prefer_keras3=kind == Kind.KERAS)
    else:
        model = _load_keras_archive(path)
    return LoadedModel(model, kind, path, keras_input_size(model, path))


def _load_keras_archive(path: Path) -> Any:
    try:
        return _keras3(path)
    except _LOAD_ERRORS as exc:
        raise UnreadableCheckpoint(
            f"{path}: cannot load it as a keras model: {brief(exc)}"
        ) from exc


def _load_h5(path: Path, options: LoadOptions, prefer_keras3: bool) -> Any:
    written_by = _h5_keras_version(path)
    if written_by is None:
        return _load_weights_into_architecture(path, options)
    keras3_first = prefer_keras3 or written_by.startswith("3")
    loaders: list[tuple[str, Loader]] = [
        (f"Keras {_version('keras')}", _keras3),
        (f"tf_keras {_version('tf_keras')} (tf.keras 2)", _tf_keras),
    ]
    if not keras3_first:
        loaders.reverse()
    tried = []
    for name, loader in loaders:
        try:
            return loader(path)
        except _LOAD_ERRORS as exc:
            tried.append(f"with {name}: {brief(exc)}")
    recorded = f"written by Keras {written_by}" if written_by else "no keras_version recorded"
    raise UnreadableCheckpoint(
        f"{path}: cannot load this .h5 model ({recorded}); "
        + "; ".join(f"tried {attempt}" for attempt in tried)
    )


def _keras3(path: Path) -> Any:
    import keras

    with warnings.catch_warnings():
        # Keras 3's shim for tf.keras 2 files complains about the `input_shape` argument the
        # file's own config uses; the user cannot act on it.
        warnings.filterwarnings("ignore", "Do not pass an `input_shape`", UserWarning)
        return keras.models.load_model(str(path), compile=False)


def _tf_keras(path: Path) -> Any:
    import tf_keras

    return tf_keras.models.load_model(str(path), compile=False)


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return "(not installed)"


def _is_hdf5(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(8) == _HDF5_MAGIC
    except OSError:
        return False


def _h5_keras_version(path: Path) -> str | None:
    """The keras_version a full-model HDF5 file records ("" when absent); None: weights only.

    A full model carries its architecture in the `model_config` attribute.
    """
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "model_config" not in handle.attrs:
                return None
            raw = handle.attrs.get("keras_version", "")
    except OSError as exc:
        raise UnreadableCheckpoint(f"{path}: not a readable HDF5 file: {brief(exc)}") from exc
    return raw.decode() if isinstance(raw, bytes) else str(raw)


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
