"""Replays assets.extra/tf_serving_warmup_requests (PredictionLog TFRecords) before AVAILABLE."""

from __future__ import annotations

import logging

import tensorflow as tf
from grpc import StatusCode
from tensorflow_serving.apis import prediction_log_pb2

from serving.errors import InvalidArgument, ServingError
from serving.loaded import LoadedVersion
from serving.predict import prepare

log = logging.getLogger("serving.warmup")

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecords


def run_warmup(loaded: LoadedVersion, iterations: int) -> int:
    """Run every warmup request `iterations` times; returns how many records were read."""
    path = loaded.servable.path / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    try:
        records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    except tf.errors.OpError as exc:
        raise ServingError(f"Error reading warmup data at {path}: {exc.message}") from exc
    for record in records:
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise InvalidArgument(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
        _replay(loaded, prediction_log_pb2.PredictionLog.FromString(record), iterations)
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        path,
        count,
    )
    return count


def _replay(loaded: LoadedVersion, entry: prediction_log_pb2.PredictionLog, times: int) -> None:
    kind = entry.WhichOneof("log_type")
    if kind != "predict_log":
        raise ServingError(f"Unsupported log_type for warmup: {kind}", StatusCode.UNIMPLEMENTED)
    call = prepare(loaded.servable, entry.predict_log.request)
    for _ in range(max(times, 1)):
        loaded.run(call, timeout=None)
