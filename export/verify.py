"""Check a written SavedModel against its source: same probabilities, same labels, both signatures,
and a corrupt image failing only its own row.

The source model is probed once, before anything is written (its answers on sample images); the
export is reloaded from disk (not the in-memory module), so what is checked is exactly what
TF Serving will load, by the TF2 loader and by the graph-mode loader TF Serving itself uses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from export.errors import BadClassifierOutput, VerificationFailed, tf_errors
from export.preprocessing import Preprocessing
from export.signatures import (
    CLASSES,
    DECODED,
    IMAGES_INPUT,
    PIXELS_INPUT,
    PREDICT_PIXELS,
    PROBABILITIES,
    SERVING_DEFAULT,
    Classifier,
    run_classifier,
)
from export.warmup import encode_png, sample_pixels

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Sample:
    """Pixels, their lossless encodings, and the source model's probabilities for them."""

    pixels: np.ndarray
    encoded: list[bytes]
    expected: np.ndarray


def probe_classifier(classifier: Classifier, preprocessing: Preprocessing) -> Sample:
    """Run the source model once on the sample images: checks that it returns [N, classes] and
    records the answers the export must reproduce."""
    pixels = sample_pixels(preprocessing.input_size)
    scale, offset = preprocessing.scale_offset()
    normalised = tf.constant(pixels, tf.float32) * tf.constant(scale) + tf.constant(offset)
    doing = f"the classifier cannot run on a float32 batch {list(normalised.shape)}"
    with tf_errors(BadClassifierOutput, doing):
        expected = np.asarray(run_classifier(classifier, normalised))
    if expected.ndim != 2 or expected.shape[0] != len(pixels):
        raise BadClassifierOutput(
            f"the classifier must return [N, classes]; it returned shape {list(expected.shape)}"
        )
    encoded = [encode_png(image) for image in pixels]
    return Sample(pixels=pixels.astype(np.float32), encoded=encoded, expected=expected)


def verify_saved_model(
    path: Path,
    sample: Sample,
    labels: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    warmup_image: bytes | None = None,
) -> float:
    """Reload `path` with the TF2 loader and with TF Serving's graph-mode loader, run the sample
    through both signatures of each; return the largest difference.

    The warmup image is run too: TF Serving refuses a version whose warmup request fails.
    """
    with tf_errors(VerificationFailed, "the export cannot be reloaded"):
        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures[SERVING_DEFAULT]
    if warmup_image is not None:
        _check_warmup(serve, warmup_image)
    with tf_errors(VerificationFailed, "the reloaded export cannot be run"):
        by_pixels = loaded.signatures[PREDICT_PIXELS](
            **{PIXELS_INPUT: tf.constant(sample.pixels, dtype=tf.float32)}
        )
        by_images = serve(**{IMAGES_INPUT: tf.constant(with_corrupt(sample), dtype=tf.string)})
    by_images = _without_corrupt(SERVING_DEFAULT, by_images, len(sample.encoded))
    worst = 0.0
    for signature, outputs in ((PREDICT_PIXELS, by_pixels), (SERVING_DEFAULT, by_images)):
        worst = max(worst, _compare(signature, outputs, sample.expected, labels, tolerance))
    return max(worst, _verify_graph_mode(path, sample, labels, tolerance))


def _verify_graph_mode(
    path: Path, sample: Sample, labels: Sequence[str], tolerance: float
) -> float:
    """Run the sample through both signatures as stock TF Serving does; the largest difference.

    TF Serving's C++ LoadSavedModel imports the graph, runs the saver's restore op and feeds
    the SignatureDefs' tensor names in a session; tf.compat.v1's loader is its Python twin. The
    TF2 loader restores objects another way: Keras 3 exports once passed it and failed every
    TF Serving request with "Could not find variable" (tensorflow/serving#2226).
    """
    feeds = {
        PREDICT_PIXELS: sample.pixels,
        SERVING_DEFAULT: np.array(with_corrupt(sample), object),
    }
    with tf_errors(VerificationFailed, "the export fails in TF Serving's graph-mode loader"):
        outputs = run_graph_mode(path, feeds)
    outputs[SERVING_DEFAULT] = _without_corrupt(
        f"{SERVING_DEFAULT} (graph-mode loader)", outputs[SERVING_DEFAULT], len(sample.encoded)
    )
    return max(
        _compare(f"{signature} (graph-mode loader)", out, sample.expected, labels, tolerance)
        for signature, out in outputs.items()
    )


def with_corrupt(sample: Sample) -> list[bytes]:
    """The sample's images and, last, the first one cut in half: a body that cannot decode."""
    first = sample.encoded[0]
    return [*sample.encoded, first[: len(first) // 2]]


def _without_corrupt(signature: str, outputs: dict[str, Any], count: int) -> dict[str, Any]:
    """Check that only the corrupt last image failed to decode; the other rows' outputs."""
    if DECODED not in outputs:
        raise VerificationFailed(f"{signature}: no {DECODED!r} output")
    decoded = np.asarray(outputs[DECODED]).tolist()
    if decoded != [True] * count + [False]:
        raise VerificationFailed(
            f"{signature}: {DECODED!r} is {decoded} for {count} good images and a corrupt one"
        )
    return {key: np.asarray(value)[:count] for key, value in outputs.items()}


def run_graph_mode(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Outputs by signature name, as stock TF Serving computes them: the v1 loader (the Python
    twin of C++ LoadSavedModel) in a Session, each signature fed by SignatureDef tensor name."""
    v1 = tf.compat.v1
    outputs = {}
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session, _no_deprecation_notice():
        meta_graph = v1.saved_model.loader.load(session, [tf.saved_model.SERVING], str(path))
        for signature, value in feeds.items():
            definition = meta_graph.signature_def[signature]
            (tensor,) = definition.inputs.values()
            fetches = {key: info.name for key, info in definition.outputs.items()}
            outputs[signature] = session.run(fetches, {tensor.name: value})
    return outputs


@contextlib.contextmanager
def _no_deprecation_notice() -> Iterator[None]:
    """Hide TensorFlow's "deprecated, use tf.saved_model.load" notice: that loader is the point."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_warmup(serve: Any, image: bytes) -> None:
    doing = "the warmup image cannot be classified (TF Serving would refuse the version)"
    with tf_errors(VerificationFailed, doing):
        outputs = serve(**{IMAGES_INPUT: tf.constant([image], dtype=tf.string)})
    if not bool(np.asarray(outputs[DECODED]).all()):
        # TF Serving would load the version, but its warmup would classify a blank image and
        # leave the decode cold: a file that is not an image is a mistake worth stopping for.
        raise VerificationFailed(
            "the warmup image cannot be classified: the serving graph cannot decode it"
        )


def _compare(
    signature: str,
    outputs: dict[str, Any],
    expected: np.ndarray,
    labels: Sequence[str],
    tolerance: float,
) -> float:
    probabilities = np.asarray(outputs[PROBABILITIES])  # tensors or session.run's arrays
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
    classes = np.asarray(outputs[CLASSES])
    want = [label.encode() for label in labels]
    if any(list(row) != want for row in classes):
        raise VerificationFailed(f"{signature}: class names in the output differ from the labels")
    return diff
