"""Predict request validation and response building, in the order TF Serving's RunPredict checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving.local.errors import InvalidArgument
from serving.local.servable import Servable
from serving.local.tensors import (
    MAX_TENSOR_BYTES,
    check_proto,
    check_size,
    dense_bytes,
    dtype_name,
    format_shape,
    shape_of,
    to_numpy,
    to_proto,
)


@dataclass(frozen=True)
class PreparedPredict:
    """A validated request: which signature, its input arrays, and the outputs to return."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    aliases: tuple[str, ...]


def prepare(servable: Servable, request: Any) -> PreparedPredict:
    """Check a PredictRequest against the signature before anything runs.

    TF Serving's order (input names, Tensor::FromProto, dtype), then what TF Serving leaves to
    the kernels: rank, every fixed dimension and the total size. Kernels that get a tensor of
    the wrong shape may abort the whole process (oneDNN's convolution does), so nothing that
    disagrees with the signature reaches the graph. INVALID_ARGUMENT / FAILED_PRECONDITION.
    """
    name, signature = servable.signature(request.model_spec.signature_name)
    _check_input_names(signature, request)
    for alias in sorted(request.inputs):
        check_proto(request.inputs[alias], alias)
    expected = sorted(signature.inputs)
    for alias in sorted(request.inputs):
        _check_tensor(alias, expected.index(alias), signature.inputs[alias], request.inputs[alias])
        check_size(request.inputs[alias], alias)
    _check_total_size(request)
    inputs = {
        alias: to_numpy(proto, alias, checked=True) for alias, proto in request.inputs.items()
    }
    return PreparedPredict(name, inputs, _output_aliases(signature, request))


def _check_tensor(alias: str, index: int, info: Any, proto: Any) -> None:
    if proto.dtype != info.dtype:
        raise InvalidArgument(
            f"Expects arg[{index}] to be {dtype_name(info.dtype)} "
            f"but {dtype_name(proto.dtype)} is provided"
        )
    if info.tensor_shape.unknown_rank:
        return
    want = tuple(d.size for d in info.tensor_shape.dim)
    sent = shape_of(proto)
    if len(sent) != len(want) or any(w >= 0 and s != w for s, w in zip(sent, want, strict=True)):
        raise InvalidArgument(
            f"input tensor shape does not match signature: {alias} has shape "
            f"{format_shape(sent)} but the signature expects {format_shape(want)}"
        )


def _check_total_size(request: Any) -> None:
    total = sum(dense_bytes(proto) for proto in request.inputs.values())
    if total > MAX_TENSOR_BYTES:
        raise InvalidArgument(
            f"input tensors would take {total} bytes; at most {MAX_TENSOR_BYTES} are accepted"
        )


def _check_input_names(signature: Any, request: Any) -> None:
    sent, wanted = set(request.inputs), set(signature.inputs)
    if len(sent) != len(wanted):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
        )
    for alias in sorted(sent):
        if alias not in wanted:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(wanted))}}}."
            )


def _output_aliases(signature: Any, request: Any) -> tuple[str, ...]:
    if not request.output_filter:
        return tuple(signature.outputs)
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return tuple(seen)


def make_response(
    model_name: str, version: int, signature_name: str, outputs: dict[str, np.ndarray]
) -> Any:
    """A PredictResponse naming the version that answered, values in typed fields."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature_name
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(to_proto(array))
    return response
