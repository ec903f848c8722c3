"""Architecture descriptions for TF2 object checkpoints, which hold weights but no graph.

Two kinds: MobileNet v1 given alpha, input size and class count (built with
keras.applications, the same layer names a Keras-trained MobileNet has), or a Keras model
config JSON as `model.to_json()` writes it (Keras 3, or tf.keras 2 when it says keras_version 2.x).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.checkpoint_types import LoadOptions
from export.errors import CheckpointNotFound, UnreadableCheckpoint, UsageError, brief

MOBILENET_V1 = "mobilenet_v1"
MOBILENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class MobileNetSpec:
    """MobileNet v1 hyper-parameters: enough to rebuild the graph the weights belong to."""

    alpha: float
    input_size: tuple[int, int]
    classes: int

    def __post_init__(self) -> None:
        if self.alpha not in MOBILENET_ALPHAS:
            raise UsageError(f"MobileNet v1 alpha must be one of {MOBILENET_ALPHAS}")
        if min(self.input_size) < 32 or self.classes < 1:
            raise UsageError("MobileNet v1 needs an input size >= 32 and at least one class")


def build_mobilenet_v1(spec: MobileNetSpec, *, tf_keras: bool = False) -> Any:
    """A MobileNet v1 with random weights and a softmax head of `spec.classes`.

    Keras 3 by default; `tf_keras=True` builds the tf.keras 2 one, whose checkpoints name
    variables differently (layer_with_weights-N rather than _operations/N).
    """
    if tf_keras:
        import tf_keras as keras_module
    else:
        import keras as keras_module

    height, width = spec.input_size
    return keras_module.applications.MobileNet(
        input_shape=(height, width, 3),
        alpha=spec.alpha,
        weights=None,
        classes=spec.classes,
        classifier_activation="softmax",
    )


def build_described(options: LoadOptions, *, tf_keras: bool, holder: str) -> Any:
    """The untrained model --architecture describes, for weights that come without one.

    `holder` names what holds the weights, for the error message.
    """
    if options.architecture is None:
        raise UsageError(
            f"{holder} holds weights only: pass --architecture mobilenet_v1 "
            "(with --alpha, --input-size, --classes) or --architecture <model.json>"
        )
    if options.architecture == MOBILENET_V1:
        if options.input_size is None or options.classes is None:
            raise UsageError("--architecture mobilenet_v1 needs --input-size and --classes")
        spec = MobileNetSpec(options.alpha, options.input_size, options.classes)
        return build_mobilenet_v1(spec, tf_keras=tf_keras)
    return load_architecture_file(Path(options.architecture), tf_keras=tf_keras)


def load_architecture_file(path: Path, *, tf_keras: bool = False) -> Any:
    """Build the (untrained) Keras model a JSON architecture file describes.

    The file is either a Keras model config (`model.to_json()`) or a MobileNet spec:
    {"architecture": "mobilenet_v1", "alpha": 1.0, "input_size": [224, 224], "classes": 40}.
    `tf_keras` picks the Keras line for a MobileNet spec; a model config says its own.
    """
    document = _read_json(path)
    if document.get("architecture") == MOBILENET_V1:
        return build_mobilenet_v1(mobilenet_spec_from_json(document), tf_keras=tf_keras)
    if "class_name" in document and "config" in document:
        return _model_from_config(document, path)
    raise UsageError(
        f"{path}: not an architecture description (expected a Keras model config with "
        f'"class_name" and "config", or {{"architecture": "{MOBILENET_V1}", ...}})'
    )


def mobilenet_spec_from_json(document: dict[str, Any]) -> MobileNetSpec:
    try:
        size = document.get("input_size", [224, 224])
        size = (size, size) if isinstance(size, int) else tuple(size)
        return MobileNetSpec(
            alpha=float(document.get("alpha", 1.0)),
            input_size=(int(size[0]), int(size[1])),
            classes=int(document["classes"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UsageError(f"bad MobileNet v1 description {document!r}: {brief(exc)}") from exc


def _model_from_config(document: dict[str, Any], path: Path) -> Any:
    text = json.dumps(document)
    try:
        if str(document.get("keras_version", "3")).startswith("2."):
            import tf_keras

            return tf_keras.models.model_from_json(text)
        import keras

        return keras.models.model_from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UnreadableCheckpoint(
            f"{path}: cannot build a Keras model from it: {brief(exc)}"
        ) from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointNotFound(f"architecture file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableCheckpoint(f"architecture file {path} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError(f"architecture file {path} must hold a JSON object")
    return document
