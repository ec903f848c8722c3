"""Replays assets.extra/tf_serving_warmup_requests (PredictionLog TFRecords) before AVAILABLE.

Errors are TF Serving's (saved_model_warmup_util.cc): a file that is not TFRecord is DATA_LOSS,
a record that is not a PredictionLog INVALID_ARGUMENT, a request the signature refuses fails as
that request would (every record goes through the same validation as a Predict call).
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf
from google.protobuf import message
from grpc import StatusCode
from tensorflow_serving.apis import prediction_log_pb2

from serving.local.errors import InvalidArgument, ServingError
from serving.local.loaded import LoadedVersion
from serving.local.predict import prepare
from serving.local.servable import code_from_tf

log = logging.getLogger("serving.warmup")

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecords


def run_warmup(loaded: LoadedVersion, iterations: int) -> int:
    """Run every warmup request `iterations` times; returns how many records were read."""
    path = loaded.servable.path / WARMUP_FILE
    if not path.is_file():
        log.info("No warmup data file found at %s", path)
        return 0
    count = 0
    for record in _read_records(path):
        _replay(loaded, _parse(record, path), iterations)
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise InvalidArgument(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        path,
        count,
    )
    return count


def _read_records(path: Path) -> list[bytes]:
    try:
        return list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    except tf.errors.OpError as exc:
        text = exc.message.splitlines()[0].strip()
        if isinstance(exc, tf.errors.DataLossError):
            raise ServingError(
                f"{text}. Please verify your warmup data is in TFRecord format.",
                StatusCode.DATA_LOSS,
            ) from exc
        raise ServingError(text, code_from_tf(exc.error_code)) from exc


def _parse(record: bytes, path: Path) -> prediction_log_pb2.PredictionLog:
    try:
        return prediction_log_pb2.PredictionLog.FromString(record)
    except message.DecodeError as exc:
        shown = record[:64].decode("utf-8", errors="replace")
        raise InvalidArgument(f"Failed to parse warmup record: {shown} from {path}") from exc


def _replay(loaded: LoadedVersion, entry: prediction_log_pb2.PredictionLog, times: int) -> None:
    kind = entry.WhichOneof("log_type")
    if kind is None:
        return  # TF Serving skips a record without a log
    if kind != "predict_log":
        raise ServingError(f"Unsupported log_type for warmup: {kind}", StatusCode.UNIMPLEMENTED)
    call = prepare(loaded.servable, entry.predict_log.request)
    for _ in range(max(times, 1)):
        loaded.run(call, timeout=None)
