"""The serving graph of a servable: decode, resize and normalise in-graph, then classify.

Both signatures end in the same `_classify`, so encoded images and raw pixels give identical
answers, and each answer carries its class names (no side file for clients to keep in sync).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from export.preprocessing import Preprocessing

SERVING_DEFAULT = "serving_default"
PREDICT_PIXELS = "predict_pixels"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
PROBABILITIES = "probabilities"
CLASSES = "classes"

# Decoding is independent per image; letting several run at once keeps batches fast on 2 cores.
_DECODE_PARALLELISM = 8

Classifier = Callable[..., Any]


def is_keras_model(obj: object) -> bool:
    """True for a Keras 3 or tf.keras 2 model: both need `training=False` for inference."""
    for module_name in ("keras", "tf_keras"):
        module = sys.modules.get(module_name)  # loaded already if obj is one of its models
        if module is not None and isinstance(obj, module.Model):
            return True
    return False


def run_classifier(classifier: Classifier, batch: tf.Tensor) -> tf.Tensor:
    """Call a classifier on a normalised float32 batch; float32 [N, C] comes back."""
    # Concrete functions (TF1 graphs) accept tensors only, not numpy arrays.
    batch = tf.convert_to_tensor(batch, dtype=tf.float32)
    keras = is_keras_model(classifier)
    output = classifier(batch, training=False) if keras else classifier(batch)
    if isinstance(output, dict) and len(output) == 1:
        output = next(iter(output.values()))
    return tf.cast(output, tf.float32)


class ServingModule(tf.Module):
    """The object tf.saved_model.save writes: the classifier plus the two serving functions."""

    def __init__(
        self, classifier: Classifier, labels: Sequence[str], preprocessing: Preprocessing
    ) -> None:
        super().__init__(name="dynoserve_servable")
        # An attribute, so the saver tracks (and writes) the classifier's variables.
        self.classifier = classifier
        self._labels = tf.constant(list(labels), dtype=tf.string)
        self._size = preprocessing.input_size
        scale, offset = preprocessing.scale_offset()
        self._scale = tf.constant(scale, dtype=tf.float32)
        self._offset = tf.constant(offset, dtype=tf.float32)
        # One traced graph of the classifier that both signatures call: tracing a large Keras
        # model is most of the export time, and this halves it.
        height, width = self._size
        self._classify = tf.function(
            self.classify_pixels,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        )

    def normalize(self, pixels: tf.Tensor) -> tf.Tensor:
        """0..255 RGB floats to what the classifier was trained on."""
        return pixels * self._scale + self._offset

    def classify_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty batch never reaches the classifier: some CPU kernels (oneDNN's convolution,
        # on by default on AVX-512 VNNI machines) mishandle zero rows, so the answer would
        # depend on the CPU. An empty batch gets empty results of the right shape everywhere.
        probabilities = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: run_classifier(self.classifier, self.normalize(pixels)),
            lambda: tf.zeros([0, self._labels.shape[0]], tf.float32),
        )
        rows = tf.shape(probabilities)[0]
        classes = tf.tile(self._labels[tf.newaxis, :], tf.stack([rows, 1]))
        return {PROBABILITIES: probabilities, CLASSES: classes}

    def decode_images(self, images: tf.Tensor) -> tf.Tensor:
        """Encoded JPEG/PNG/BMP/GIF strings [N] to float32 RGB [N, H, W, 3] in 0..255."""
        height, width = self._size
        return tf.map_fn(
            self._decode_one,
            images,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
            parallel_iterations=_DECODE_PARALLELISM,
        )

    def _decode_one(self, data: tf.Tensor) -> tf.Tensor:
        # expand_animations=False: a GIF yields its first frame as [H, W, 3], like a still image.
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        resized = tf.image.resize(image, self._size, method=tf.image.ResizeMethod.BILINEAR)
        return tf.ensure_shape(resized, [*self._size, 3])

    def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify(self.decode_images(images))

    def serve_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify(pixels)


def build_signatures(module: ServingModule) -> dict[str, Any]:
    """Concrete functions for tf.saved_model.save, keyed by signature name."""
    height, width = module._size
    images_spec = tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)
    pixels_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name=PIXELS_INPUT)
    serve_images = tf.function(module.serve_images, input_signature=[images_spec])
    serve_pixels = tf.function(module.serve_pixels, input_signature=[pixels_spec])
    return {
        SERVING_DEFAULT: serve_images.get_concrete_function(),
        PREDICT_PIXELS: serve_pixels.get_concrete_function(),
    }
