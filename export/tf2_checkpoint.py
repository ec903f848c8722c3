"""TF2 object checkpoints (tf.train.Checkpoint): weights only, rebuilt onto a described model.

The architecture comes from the command line (mobilenet_v1 with alpha, input size and class
count) or a JSON file; the restore must then account for every variable of that model, so a
mismatched description fails loudly instead of serving random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.architectures import build_described
from export.checkpoint_types import Kind, LoadedModel, LoadOptions
from export.errors import UnreadableCheckpoint, tf_errors
from export.keras_files import keras_input_size


def load_tf2_checkpoint(prefix: Path, options: LoadOptions) -> LoadedModel:
    """Build the described model and restore the checkpoint's weights into it."""
    model = build_described(
        options, tf_keras=_written_by_tf_keras(prefix), holder="a TF2 checkpoint"
    )
    _restore(model, prefix, options.checkpoint_key)
    return LoadedModel(
        classifier=model, kind=Kind.TF2, path=prefix, input_size=keras_input_size(model, prefix)
    )


def _written_by_tf_keras(prefix: Path) -> bool:
    """tf.keras 2 tracks layers as layer_with_weights-N / layer-N; Keras 3 as _operations/N."""
    import tensorflow as tf

    with tf_errors(UnreadableCheckpoint, f"{prefix}: not a readable TF2 checkpoint"):
        names = [name for name, _shape in tf.train.list_variables(str(prefix))]
    return any("/layer_with_weights-" in name or "/layer-" in name for name in names)


def _restore(model: Any, prefix: Path, key: str) -> None:
    import tensorflow as tf

    doing = (
        f"{prefix}: its weights do not fit the described architecture "
        f"(saved as tf.train.Checkpoint({key}=model)?)"
    )
    with tf_errors(UnreadableCheckpoint, doing):
        _check_key(prefix, key)
        status = tf.train.Checkpoint(**{key: model}).read(str(prefix))
        # Extras in the checkpoint (optimizer slots, step counters) are fine: silence them.
        status.expect_partial()
        # ...but every variable of the model must come from the checkpoint.
        status.assert_existing_objects_matched()


def _check_key(prefix: Path, key: str) -> None:
    """A checkpoint without a `key` object would restore nothing and not complain."""
    import tensorflow as tf

    roots = {name.split("/", 1)[0] for name, _shape in tf.train.list_variables(str(prefix))}
    if key not in roots:
        shown = ", ".join(sorted(r for r in roots if not r.startswith("_"))) or "none"
        raise KeyError(f"the checkpoint has no object named {key!r} (it has: {shown})")
