"""The serving graph of a servable: decode, resize and normalise in-graph, then classify.

Both signatures end in the same `_classify`, so encoded images and raw pixels give identical
answers, and each answer carries its class names (no side file for clients to keep in sync).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import tensorflow as tf

from export.errors import InvalidPreprocessing
from export.preprocessing import Preprocessing

SERVING_DEFAULT = "serving_default"
PREDICT_PIXELS = "predict_pixels"
IMAGES_INPUT = "images"
PIXELS_INPUT = "pixels"
PROBABILITIES = "probabilities"
CLASSES = "classes"
# serving_default's per-image flag: false where the image could not be decoded. Such a row's
# scores are those of a black image and mean nothing; the gateway answers it with an error.
DECODED = "decoded"

# Decoding is independent per image; letting several run at once keeps batches fast on 2 cores.
_DECODE_PARALLELISM = 8

Classifier = Callable[..., Any]

# How the serving graph decodes a JPEG before the bilinear resize to the input size:
# "full" decodes every pixel; "scaled" lets libjpeg scale by 1/2, 1/4 or 1/8 in the DCT domain
# (decode_jpeg's `ratio`), the largest that keeps both sides >= the input size, read from the
# header. A 640x480 photo for a 224 model decodes at 320x240: fewer pixels to decode and resize.
# The pixels differ slightly (DCT scaling averages, like an antialiased resize), so answers can
# too: bench/jpeg_decode.py measures the time and the top-1 agreement.
JPEG_FULL = "full"
JPEG_SCALED = "scaled"
JPEG_DECODES = (JPEG_FULL, JPEG_SCALED)
_DCT_RATIOS = (1, 2, 4, 8)


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
    """The object tf.saved_model.save writes: the two serving functions and the variables they
    read (build_signatures tracks those; see `track_variables_read` for why not the classifier)."""

    def __init__(
        self,
        classifier: Classifier,
        labels: Sequence[str],
        preprocessing: Preprocessing,
        jpeg_decode: str = JPEG_FULL,
    ) -> None:
        super().__init__(name="dynoserve_servable")
        if jpeg_decode not in JPEG_DECODES:
            raise InvalidPreprocessing(
                f"jpeg_decode must be one of {', '.join(JPEG_DECODES)}; got {jpeg_decode!r}"
            )
        self._jpeg_decode = jpeg_decode
        # Kept out of the saved object graph on purpose: see track_variables_read.
        self._classifier = self._no_dependency(classifier)
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

    def track_variables_read(self, functions: Iterable[Any]) -> None:
        """Make the tf.Variables the traced `functions` read this module's saved state, each once.

        Not the classifier: a Keras 3 model's variables are KerasVariables wrapping the
        tf.Variables its graph reads, and saved through the model only the wrappers enter the
        SavedModel's object graph. The TF2 loader copes; the graph-mode restore that stock
        TF Serving runs (LoadSavedModel) leaves the wrapped variables unset, so the first request
        fails with "Could not find variable ..." (tensorflow/serving#2226, keras-team/keras#19274).
        Tracking the model as well would write every weight twice (Keras `model.export`).
        """
        read = {id(v): v for function in functions for v in function.variables}
        self.variables_read = sorted(read.values(), key=lambda v: v.name)

    def normalize(self, pixels: tf.Tensor) -> tf.Tensor:
        """0..255 RGB floats to what the classifier was trained on."""
        return pixels * self._scale + self._offset

    def classify_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty batch never reaches the classifier: some CPU kernels (oneDNN's convolution,
        # on by default on AVX-512 VNNI machines) mishandle zero rows, so the answer would
        # depend on the CPU. An empty batch gets empty results of the right shape everywhere.
        probabilities = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: run_classifier(self._classifier, self.normalize(pixels)),
            lambda: tf.zeros([0, self._labels.shape[0]], tf.float32),
        )
        rows = tf.shape(probabilities)[0]
        classes = tf.tile(self._labels[tf.newaxis, :], tf.stack([rows, 1]))
        return {PROBABILITIES: probabilities, CLASSES: classes}

    def decode_images(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Encoded JPEG/PNG/BMP/GIF strings [N] to float32 RGB [N, H, W, 3] in 0..255, and
        bool [N]: whether each decoded (an image that did not is all zeros)."""
        return decode_tolerantly(images, self._size, self._jpeg_decode)

    def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels, decoded = self.decode_images(images)
        return {**self._classify(pixels), DECODED: decoded}

    def serve_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify(pixels)


def decode_tolerantly(
    images: tf.Tensor, size: tuple[int, int], jpeg_decode: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decode a batch so that an image failing to decode fails only its own row.

    A decode op that fails fails the whole graph run, and with server-side batching that is
    every request in the batch (stock TF Serving runs one batch as one Session::Run). A graph
    has one way to survive an op's error: tf.data's ignore_errors, which drops the element. So
    each image is decoded as a dataset element tagged with its row, the survivors are batched
    (with one sentinel so the batch is never empty) and put back in their rows; a dropped row
    stays zeros and `decoded` false.
    """
    height, width = size
    count = tf.shape(images)[0]
    # A parallel map starts a thread of its own each run: a lone image decodes on the caller's.
    found, pixels = tf.cond(
        count > 1,
        lambda: _surviving_rows(images, size, jpeg_decode, parallel=True),
        lambda: _surviving_rows(images, size, jpeg_decode, parallel=False),
    )
    decoded = tf.scatter_nd(found[:, tf.newaxis], tf.ones_like(found, tf.bool), [count])
    pixels = tf.cond(
        tf.shape(found)[0] == count,
        lambda: pixels,
        lambda: tf.scatter_nd(found[:, tf.newaxis], pixels, tf.stack([count, height, width, 3])),
    )
    return tf.ensure_shape(pixels, [None, height, width, 3]), decoded


def _surviving_rows(
    images: tf.Tensor, size: tuple[int, int], jpeg_decode: str, *, parallel: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rows that decoded, in order, and their pixels [found, H, W, 3]."""
    count = tf.shape(images)[0]
    rows = tf.data.Dataset.from_tensor_slices((tf.range(count), images))
    calls = tf.cast(tf.minimum(count, _DECODE_PARALLELISM), tf.int64) if parallel else None
    rows = rows.map(
        lambda row, data: (row, decode_and_resize(data, size, jpeg_decode)),
        num_parallel_calls=calls,
        deterministic=True if parallel else None,
    ).ignore_errors()
    sentinel = tf.data.Dataset.from_tensors((tf.constant(-1), tf.zeros([*size, 3])))
    batch = rows.concatenate(sentinel).batch(tf.cast(count + 1, tf.int64))
    found, pixels = batch.get_single_element()
    return found[:-1], pixels[:-1]


def decode_and_resize(data: tf.Tensor, size: tuple[int, int], jpeg_decode: str) -> tf.Tensor:
    """One encoded image (JPEG/PNG/BMP/GIF) to float32 RGB [H, W, 3] in 0..255 at `size`."""
    if jpeg_decode == JPEG_SCALED:
        image = tf.cond(
            tf.io.is_jpeg(data), lambda: decode_jpeg_scaled(data, size), lambda: _decode_any(data)
        )
    else:
        image = _decode_any(data)
    resized = tf.image.resize(image, size, method=tf.image.ResizeMethod.BILINEAR)
    return tf.ensure_shape(resized, [*size, 3])


def _decode_any(data: tf.Tensor) -> tf.Tensor:
    # expand_animations=False: a GIF yields its first frame as [H, W, 3], like a still image.
    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def dct_ratio_index(data: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Index into _DCT_RATIOS of the largest ratio whose output (ceil(side / ratio), as libjpeg
    scales) stays >= `size` on both sides, from the JPEG header alone."""
    shape = tf.io.extract_jpeg_shape(data)
    height, width = shape[0], shape[1]
    index = tf.constant(0)
    for i, ratio in enumerate(_DCT_RATIOS[1:], start=1):
        fits = tf.logical_and(
            (height + ratio - 1) // ratio >= size[0], (width + ratio - 1) // ratio >= size[1]
        )
        index = tf.where(fits, i, index)
    return index


def decode_jpeg_scaled(data: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Decode a JPEG at the smallest DCT scale that still covers `size`; uint8 [h, w, 3]."""
    # `ratio` is an attribute of the op, not an input: one branch per ratio.
    branches = [
        (lambda r=ratio: tf.io.decode_jpeg(data, channels=3, ratio=r)) for ratio in _DCT_RATIOS
    ]
    return tf.switch_case(dct_ratio_index(data, size), branches)


def build_signatures(module: ServingModule) -> dict[str, Any]:
    """Concrete functions for tf.saved_model.save, keyed by signature name; the module then
    tracks the variables they read, so saving it writes them."""
    height, width = module._size
    images_spec = tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)
    pixels_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name=PIXELS_INPUT)
    serve_images = tf.function(module.serve_images, input_signature=[images_spec])
    serve_pixels = tf.function(module.serve_pixels, input_signature=[pixels_spec])
    signatures = {
        SERVING_DEFAULT: serve_images.get_concrete_function(),
        PREDICT_PIXELS: serve_pixels.get_concrete_function(),
    }
    module.track_variables_read(signatures.values())
    return signatures
