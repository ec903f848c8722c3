"""Check a written SavedModel against its source: same probabilities, same labels, both signatures.

The export is reloaded from disk (not the in-memory module), so what is checked is exactly what
TF Serving will load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from export.errors import VerificationFailed, brief
from export.signatures import (
    CLASSES,
    IMAGES_INPUT,
    PIXELS_INPUT,
    PREDICT_PIXELS,
    PROBABILITIES,
    SERVING_DEFAULT,
)

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Sample:
    """Pixels, their lossless encodings, and the source model's probabilities for them."""

    pixels: np.ndarray
    encoded: list[bytes]
    expected: np.ndarray


def verify_saved_model(
    path: Path,
    sample: Sample,
    labels: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    warmup_image: bytes | None = None,
) -> float:
    """Reload `path`, run the sample through both signatures; return the largest difference.

    The warmup image is run too: TF Serving refuses a version whose warmup request fails.
    """
    try:
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures[SERVING_DEFAULT]
    except (tf.errors.OpError, KeyError, ValueError, OSError) as exc:
        raise VerificationFailed(f"the export cannot be reloaded: {brief(exc)}") from exc
    if warmup_image is not None:
        _check_warmup(serve, warmup_image)
    try:
        by_pixels = loaded.signatures[PREDICT_PIXELS](
            **{PIXELS_INPUT: tf.constant(sample.pixels, dtype=tf.float32)}
        )
        by_images = serve(**{IMAGES_INPUT: tf.constant(sample.encoded, dtype=tf.string)})
    except (tf.errors.OpError, KeyError, ValueError, OSError) as exc:
        raise VerificationFailed(f"the reloaded export cannot be run: {brief(exc)}") from exc
    worst = 0.0
    for signature, outputs in ((PREDICT_PIXELS, by_pixels), (SERVING_DEFAULT, by_images)):
        worst = max(worst, _compare(signature, outputs, sample.expected, labels, tolerance))
    return worst


def _check_warmup(serve: Any, image: bytes) -> None:
    try:
        serve(**{IMAGES_INPUT: tf.constant([image], dtype=tf.string)})
    except tf.errors.OpError as exc:
        raise VerificationFailed(
            f"the warmup image cannot be classified (TF Serving would refuse the version): "
            f"{brief(exc)}"
        ) from exc


def _compare(
    signature: str,
    outputs: dict[str, tf.Tensor],
    expected: np.ndarray,
    labels: Sequence[str],
    tolerance: float,
) -> float:
    probabilities = outputs[PROBABILITIES].numpy()
    if probabilities.shape != expected.shape:
        raise VerificationFailed(
            f"{signature}: probabilities shape {probabilities.shape}, expected {expected.shape}"
        )
    diff = float(np.max(np.abs(probabilities - expected))) if expected.size else 0.0
    if not diff <= tolerance:  # also catches NaN
        raise VerificationFailed(
            f"{signature}: probabilities differ from the source model by {diff:.3g} "
            f"(tolerance {tolerance:g})"
        )
    classes = outputs[CLASSES].numpy()
    want = [label.encode() for label in labels]
    if any(list(row) != want for row in classes):
        raise VerificationFailed(f"{signature}: class names in the output differ from the labels")
    return diff
