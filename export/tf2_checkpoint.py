"""TF2 object checkpoints (tf.train.Checkpoint): weights only, rebuilt onto a described model.

The architecture comes from the command line (mobilenet_v1 with alpha, input size and class
count) or a JSON file; the restore must then account for every variable of that model, so a
mismatched description fails loudly instead of serving random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.architectures import (
    MOBILENET_V1,
    MobileNetSpec,
    build_mobilenet_v1,
    load_architecture_file,
)
from export.checkpoints import Kind, LoadedModel, LoadOptions
from export.errors import UnreadableCheckpoint, UsageError
from export.keras_files import keras_input_size


def load_tf2_checkpoint(prefix: Path, options: LoadOptions) -> LoadedModel:
    """Build the described model and restore the checkpoint's weights into it."""
    model = _build(options)
    _restore(model, prefix, options.checkpoint_key)
    return LoadedModel(
        classifier=model, kind=Kind.TF2, path=prefix, input_size=keras_input_size(model, prefix)
    )


def _build(options: LoadOptions) -> Any:
    if options.architecture is None:
        raise UsageError(
            "a TF2 checkpoint holds weights only: pass --architecture mobilenet_v1 "
            "(with --alpha, --input-size, --classes) or --architecture <model.json>"
        )
    if options.architecture == MOBILENET_V1:
        if options.input_size is None or options.classes is None:
            raise UsageError("--architecture mobilenet_v1 needs --input-size and --classes")
        spec = MobileNetSpec(options.alpha, options.input_size, options.classes)
        return build_mobilenet_v1(spec)
    return load_architecture_file(Path(options.architecture))


def _restore(model: Any, prefix: Path, key: str) -> None:
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(**{key: model})
    try:
        status = checkpoint.read(str(prefix))
        # Every variable of the model must come from the checkpoint; optimizer slots and
        # other extras in the checkpoint are fine and left alone.
        status.assert_existing_objects_matched()
        _assert_all_restored(model, checkpoint, prefix, key)
        status.expect_partial()
    except (tf.errors.OpError, ValueError, AssertionError, KeyError) as exc:
        raise UnreadableCheckpoint(
            f"{prefix}: its weights do not fit the described architecture "
            f"(saved as tf.train.Checkpoint({key}=model)?): {exc}"
        ) from exc


def _assert_all_restored(model: Any, checkpoint: Any, prefix: Path, key: str) -> None:
    """A checkpoint with no `key` object restores nothing and raises nothing: catch that."""
    import tensorflow as tf

    names = {name for name, _shape in tf.train.list_variables(str(prefix))}
    if not any(name.startswith(f"{key}/") for name in names):
        raise AssertionError(f"the checkpoint has no object named {key!r}")
    if not model.weights:
        raise AssertionError("the described model has no weights")
