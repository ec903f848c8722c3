"""Tiny deterministic servables for tests of every package (serving, gateway, sync, e2e).

`write_tiny_model` writes a real version in the shared format in a few seconds. Its answers are
predictable: on a solid-colour image the class index is the dominant channel (R -> 0, G -> 1,
B -> 2, modulo the class count), so with the default labels red is "cat", green "dog" and blue
"bird". Keep the signature stable: other packages' fixtures call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from export.preprocessing import Preprocessing
from export.servable import ServableSpec, check_labels, write_servable

TINY_NORMALIZATION = "minus_one_to_one"
# How strongly the mean colour drives the logits, against the small random conv path.
_COLOUR_GAIN = 4.0
_CONV_FILTERS = 8


class TinyConvNet(tf.Module):
    """A one-conv-layer classifier with seeded weights plus a dominant-colour path."""

    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__(name="tiny_conv_net")
        rng = np.random.default_rng(seed)
        self.kernel = tf.Variable(_normal(rng, (3, 3, 3, _CONV_FILTERS), 0.3), name="kernel")
        self.conv_bias = tf.Variable(np.zeros(_CONV_FILTERS, np.float32), name="conv_bias")
        self.dense = tf.Variable(_normal(rng, (_CONV_FILTERS, classes), 0.1), name="dense")
        colour = np.zeros((3, classes), np.float32)
        for channel in range(3):
            colour[channel, channel % classes] += _COLOUR_GAIN
        self.colour = tf.Variable(colour, name="colour")

    def __call__(self, batch: tf.Tensor) -> tf.Tensor:
        features = tf.nn.conv2d(batch, self.kernel, strides=2, padding="SAME")
        pooled = tf.reduce_mean(tf.nn.relu(features + self.conv_bias), axis=[1, 2])
        mean_colour = tf.reduce_mean(batch, axis=[1, 2])
        return tf.nn.softmax(pooled @ self.dense + mean_colour @ self.colour)


def write_tiny_model(
    base: Path,
    name: str,
    version: int,
    labels: Sequence[str] = ("cat", "dog", "bird"),
    input_size: tuple[int, int] = (32, 32),
    seed: int = 0,
) -> Path:
    """Write a tiny servable at base/name/version and return that directory."""
    labels = check_labels(labels)
    target = Path(base) / name / str(version)
    spec = ServableSpec(
        TinyConvNet(len(labels), seed),
        labels,
        Preprocessing(input_size=tuple(input_size), normalization=TINY_NORMALIZATION),  # type: ignore[arg-type]
        target,
        name=name,
        version=version,
        source={"kind": "tiny", "path": f"export.testing.TinyConvNet(seed={seed})"},
    )
    write_servable(spec)
    return target


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, size=shape).astype(np.float32)
