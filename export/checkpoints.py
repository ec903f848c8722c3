"""Which kind of checkpoint a path is, and which loader turns it into a classifier.

Kinds: Keras 3 `.keras` archives, legacy tf.keras `.h5`, TF2 object checkpoints (weights only,
plus an architecture description) and TF1 checkpoints with their `.meta` graph. The types the
loaders share are in checkpoint_types.py, so the loaders never import this dispatcher.
"""

from __future__ import annotations

from pathlib import Path

from export.checkpoint_types import Kind, LoadedModel, LoadOptions
from export.errors import CheckpointNotFound, UnknownCheckpointKind

# First bytes of the two container formats, for files whose suffix says nothing.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


def detect_kind(path: Path) -> tuple[Kind, Path]:
    """Work out the kind from the path; returns it with the path to load (a prefix for ckpts)."""
    path = Path(path)
    if path.suffix == ".index" or path.suffix == ".meta":
        return _prefix_kind(path.with_suffix(""), path)
    if path.is_dir():
        return _directory_kind(path)
    if path.is_file():
        return _file_kind(path)
    if Path(f"{path}.index").is_file() or Path(f"{path}.meta").is_file():
        return _prefix_kind(path, path)
    raise CheckpointNotFound(f"checkpoint {path} does not exist")


def _file_kind(path: Path) -> tuple[Kind, Path]:
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return Kind.KERAS, path
    if suffix in (".h5", ".hdf5"):
        return Kind.H5, path
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise CheckpointNotFound(f"checkpoint {path} is not readable: {exc}") from exc
    if head.startswith(_HDF5_MAGIC):
        return Kind.H5, path
    if head.startswith(_ZIP_MAGIC):
        return Kind.KERAS, path
    raise UnknownCheckpointKind(
        f"{path}: not a checkpoint kind the exporter knows (.keras, .h5, a TF2 checkpoint "
        "prefix, or a TF1 checkpoint with its .meta)"
    )


def _directory_kind(path: Path) -> tuple[Kind, Path]:
    """A training directory: its `checkpoint` file names the latest prefix."""
    if (path / "saved_model.pb").exists():
        raise UnknownCheckpointKind(
            f"{path} is already a SavedModel; export reads training checkpoints"
        )
    state = path / "checkpoint"
    if not state.is_file():
        raise UnknownCheckpointKind(
            f"{path} is a directory without a `checkpoint` file; pass the checkpoint prefix"
        )
    prefix = _latest_prefix(path, state)
    return _prefix_kind(prefix, path)


def _latest_prefix(directory: Path, state: Path) -> Path:
    # The state file is a text proto; its first line is `model_checkpoint_path: "<prefix>"`.
    for line in state.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
            prefix = Path(value.strip().strip('"'))
            return prefix if prefix.is_absolute() else directory / prefix
    raise UnknownCheckpointKind(f"{state} names no model_checkpoint_path")


def _prefix_kind(prefix: Path, given: Path) -> tuple[Kind, Path]:
    meta = Path(f"{prefix}.meta")
    index = Path(f"{prefix}.index")
    if meta.is_file():
        return Kind.TF1, prefix
    if index.is_file():
        return Kind.TF2, prefix
    raise CheckpointNotFound(f"checkpoint {given}: neither {index.name} nor {meta.name} exists")


def load_checkpoint(kind: Kind, path: Path, options: LoadOptions) -> LoadedModel:
    """Load `path` as `kind` (imports the loader, and so Keras or TF, only when needed)."""
    if kind in (Kind.KERAS, Kind.H5):
        from export.keras_files import load_keras_file

        return load_keras_file(kind, path, options)
    if kind == Kind.TF2:
        from export.tf2_checkpoint import load_tf2_checkpoint

        return load_tf2_checkpoint(path, options)
    from export.tf1_checkpoint import load_tf1_checkpoint

    return load_tf1_checkpoint(path, options)
