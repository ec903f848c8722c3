"""TF Serving's warmup file and the sample images an export is warmed up and verified with.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog)
before it marks a version AVAILABLE, so the first real request does not pay for graph
initialisation. The records are built with the official tensorflow_serving.apis protos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from export.signatures import IMAGES_INPUT, SERVING_DEFAULT

WARMUP_FILE = "tf_serving_warmup_requests"


def sample_pixels(input_size: tuple[int, int], count: int = 3, seed: int = 1234) -> np.ndarray:
    """Deterministic uint8 RGB images [count, H, W, 3]: gradients with noise, not flat colours.

    Flat images would let a broken resize or channel order pass verification unnoticed.
    """
    height, width = input_size
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    cols = np.linspace(0.0, 1.0, width)[None, :, None]
    images = []
    for _ in range(count):
        weights = rng.uniform(0.0, 1.0, size=(2, 3))
        base = 255.0 * (rows * weights[0] + cols * weights[1]) / 2.0
        noise = rng.normal(0.0, 25.0, size=(height, width, 3))
        images.append(np.clip(base + noise, 0, 255))
    return np.stack(images).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless encoding, so decoding in the graph gives back exactly these pixels."""
    return bytes(tf.io.encode_png(tf.constant(image, dtype=tf.uint8)).numpy())


def warmup_record(model_name: str, images: Sequence[bytes]) -> bytes:
    """One serialised PredictionLog: a serving_default PredictRequest for `images`."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_DEFAULT)
    )
    request.inputs[IMAGES_INPUT].CopyFrom(
        tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)])
    )
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return log.SerializeToString()


def write_warmup_file(path: Path, model_name: str, image: bytes) -> None:
    """Write the warmup TFRecord: one single-image request, the shape real traffic has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(warmup_record(model_name, [image]))


def read_warmup_file(path: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Parse a warmup file back into PredictionLog messages (for checks and tests)."""
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
