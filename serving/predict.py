"""Predict request validation and response building, in the order TF Serving's RunPredict checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving.errors import InvalidArgument
from serving.servable import Servable
from serving.tensors import dtype_name, to_numpy, to_proto


@dataclass(frozen=True)
class PreparedPredict:
    """A validated request: which signature, its input arrays, and the outputs to return."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    aliases: tuple[str, ...]


def prepare(servable: Servable, request: Any) -> PreparedPredict:
    """Check a PredictRequest against the signature; INVALID_ARGUMENT/FAILED_PRECONDITION."""
    name, signature = servable.signature(request.model_spec.signature_name)
    _check_input_names(signature, request)
    expected = sorted(signature.inputs)
    inputs: dict[str, np.ndarray] = {}
    for alias, proto in request.inputs.items():
        want = signature.inputs[alias].dtype
        if proto.dtype != want:
            raise InvalidArgument(
                f"Expects arg[{expected.index(alias)}] to be {dtype_name(want)} "
                f"but {dtype_name(proto.dtype)} is provided"
            )
        inputs[alias] = to_numpy(proto, alias)
    return PreparedPredict(name, inputs, _output_aliases(signature, request))


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
