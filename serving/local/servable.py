"""One loaded model version: its SignatureDefs (from saved_model.pb) and callable signatures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from grpc import StatusCode
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.local.errors import FailedPrecondition, InvalidArgument, ServingError, Unknown

log = logging.getLogger("serving.servable")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


def read_meta_graph(path: Path, tags: frozenset[str]) -> Any:
    """The MetaGraphDef whose tag set equals `tags`, parsed from saved_model.pb(txt)."""
    saved_model = saved_model_pb2.SavedModel()
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    try:
        if binary.exists():
            saved_model.ParseFromString(binary.read_bytes())
        elif text.exists():
            text_format.Parse(text.read_text(), saved_model)
        else:
            raise ServingError(
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory "
                f"path: {path}. Check that the directory exists and that you have the "
                f"right permissions for accessing it.",
                code=StatusCode.NOT_FOUND,
            )
    except (message.DecodeError, text_format.ParseError) as exc:
        raise ServingError(f"Can't parse {binary} as binary proto", StatusCode.DATA_LOSS) from exc
    for meta_graph in saved_model.meta_graphs:
        if frozenset(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(tags))} }}. "
        f"To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
        f"`saved_model_cli` (available: {available})",
        StatusCode.NOT_FOUND,
    )


class Servable:
    """A SavedModel version ready to run: signature name -> concrete function."""

    def __init__(self, name: str, version: int, path: Path, tags: frozenset[str]) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph: meta_graph_pb2.MetaGraphDef = read_meta_graph(path, tags)
        self.signature_defs = self.meta_graph.signature_def
        try:
            loaded = tf.saved_model.load(str(path), tags=sorted(tags))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise _load_error(exc) from exc
        self._loaded = loaded  # keeps the variables alive
        self._functions = dict(loaded.signatures.items())

    def signature(self, name: str) -> tuple[str, Any]:
        """(resolved name, SignatureDef); FAILED_PRECONDITION as TF Serving when absent."""
        resolved = name or DEFAULT_SIGNATURE
        if resolved not in self.signature_defs or resolved not in self._functions:
            raise FailedPrecondition(f'Serving signature key "{resolved}" not found.')
        signature_def = self.signature_defs[resolved]
        if signature_def.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(
                "Expected prediction signature method_name to be one of "
                f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                f"Was: {signature_def.method_name}",
                StatusCode.INTERNAL,
            )
        return resolved, signature_def

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], aliases: list[str]
    ) -> dict[str, np.ndarray]:
        """Call the signature; TF errors become ServingErrors with TF's code."""
        function = self._functions[signature_name]
        try:
            tensors = {key: tf.constant(value) for key, value in inputs.items()}
            outputs = function(**tensors)
            return {alias: outputs[alias].numpy() for alias in aliases}
        except tf.errors.OpError as exc:
            raise ServingError(exc.message, code_from_tf(exc.error_code)) from exc
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc).splitlines()[0]) from exc


def code_from_tf(error_code: int) -> Any:
    """The grpc StatusCode with TF's numeric error code (they share the numbering)."""
    for code in StatusCode:
        if code.value[0] == error_code:
            return code
    return StatusCode.UNKNOWN


def _load_error(exc: Exception) -> ServingError:
    if isinstance(exc, tf.errors.OpError):
        return ServingError(exc.message, code_from_tf(exc.error_code))
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, FileNotFoundError):  # TF's Python loader re-raises NOT_FOUND as this
        return ServingError(message, StatusCode.NOT_FOUND)
    return Unknown(message)
