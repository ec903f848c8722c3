"""The types every checkpoint loader shares: the kinds, the load options, the loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Kind(StrEnum):
    """The checkpoint kinds the exporter reads."""

    KERAS = "keras"
    H5 = "h5"
    TF2 = "tf2"
    TF1 = "tf1"


@dataclass(frozen=True)
class LoadOptions:
    """What a checkpoint does not say about itself, from the command line."""

    architecture: str | None = None
    """Weights-only sources (TF2 checkpoint, weights .h5): "mobilenet_v1" or a JSON file."""
    alpha: float = 1.0
    """TF2 mobilenet_v1: width multiplier."""
    input_size: tuple[int, int] | None = None
    """Input (H, W) when the model does not declare it; required for mobilenet_v1."""
    classes: int | None = None
    """TF2 mobilenet_v1: number of classes (else the labels count)."""
    checkpoint_key: str = "model"
    """TF2: attribute the model was saved under, as in tf.train.Checkpoint(model=...)."""
    input_tensor: str | None = None
    """TF1: name of the image input tensor, e.g. "input:0"."""
    output_tensor: str | None = None
    """TF1: name of the probabilities (or logits) tensor, e.g. "probs:0"."""


@dataclass(frozen=True)
class LoadedModel:
    """A classifier and what its checkpoint revealed about its input."""

    classifier: Any
    kind: Kind
    path: Path
    input_size: tuple[int, int] | None
    """(H, W) the model declares, or None when its input is dynamic."""
