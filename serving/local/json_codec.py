"""TF Serving's REST JSON: predict bodies (row `instances` / columnar `inputs`, `{"b64": ...}`)
to PredictRequest, PredictResponse to `predictions` / `outputs`, and status/metadata rendering."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from serving.local.errors import InvalidArgument
from serving.local.tensors import to_numpy, to_proto

ROW, COLUMNAR = "row", "columnar"

_NUMPY_FOR_ENUM: dict[int, Any] = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_BOOL: np.bool_,
}


def parse_body(body: bytes) -> dict[str, Any]:
    """The request object; INVALID_ARGUMENT for anything but a JSON object."""
    try:
        document = json.loads(body.decode("utf-8") if body else "")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"JSON Parse error: {exc.args[0]}") from exc
    except RecursionError as exc:  # rapidjson refuses such nesting as a parse error too
        raise InvalidArgument("JSON Parse error: nesting too deep") from exc
    if not isinstance(document, dict):
        raise InvalidArgument("JSON Value: " + _short(document) + " Is not object")
    return document


def signature_name_of(document: dict[str, Any]) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument("'signature_name' key must be a string value.")
    return name


def fill_predict_request(
    document: dict[str, Any], input_infos: Any, request: predict_pb2.PredictRequest
) -> str:
    """Fill request.inputs from the body; returns ROW or COLUMNAR (decides the output shape)."""
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances == has_inputs:
        if has_instances:
            raise InvalidArgument(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists"
            )
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    try:
        if has_instances:
            arrays = _rows(document["instances"], input_infos)
        else:
            arrays = _columns(document["inputs"], input_infos)
    except RecursionError as exc:
        raise InvalidArgument("JSON Value nested too deeply") from exc
    for alias, array in arrays.items():
        request.inputs[alias].CopyFrom(to_proto(array))
    return ROW if has_instances else COLUMNAR


def _rows(instances: Any, infos: Any) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidArgument("Excepting 'instances' to be an list/array")
    names = sorted(infos)
    if not instances:
        raise InvalidArgument("'instances' is empty.")
    keyed = len(names) > 1 or all(
        isinstance(item, dict) and set(item) == set(names) for item in instances
    )
    if not keyed:
        return {names[0]: _array(instances, infos[names[0]].dtype, names[0])}
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, item in enumerate(instances):
        if not isinstance(item, dict):
            raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
        for name in names:
            if name not in item:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {name} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {name}"
                )
            columns[name].append(item[name])
    return {name: _array(values, infos[name].dtype, name) for name, values in columns.items()}


def _columns(inputs: Any, infos: Any) -> dict[str, np.ndarray]:
    names = sorted(infos)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {
            name: _array(value, _dtype_for(infos, name), name) for name, value in inputs.items()
        }
    if len(names) != 1:
        raise InvalidArgument("Expecting 'inputs' to be an object with one key per signature input")
    return {names[0]: _array(inputs, infos[names[0]].dtype, names[0])}


def _dtype_for(infos: Any, name: str) -> int:
    # An unknown name is left for Predict to reject with TF Serving's input-alias message.
    return int(infos[name].dtype) if name in infos else types_pb2.DT_FLOAT


def _array(value: Any, dtype: int, name: str) -> np.ndarray:
    if dtype == types_pb2.DT_STRING:
        return _string_array(value, name)
    numpy_type = _NUMPY_FOR_ENUM.get(dtype)
    if numpy_type is None:
        raise InvalidArgument(f"Tensor {name} has a type the REST API does not support")
    try:
        raw = np.asarray(value)
        if raw.dtype.kind in "USO":  # text, null or objects where numbers belong
            raise TypeError(f"{raw.dtype} is not a number")
        return raw.astype(numpy_type)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidArgument(
            f"JSON Value: {_short(value)} not of expected type: {np.dtype(numpy_type).name}"
        ) from exc


def _string_array(value: Any, name: str) -> np.ndarray:
    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(v) for v in item]
        if _is_b64(item):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, TypeError) as exc:
                raise InvalidArgument(f"Unable to base64 decode: {_short(item)}") from exc
        if isinstance(item, str):
            return item.encode("utf-8")
        raise InvalidArgument(f"JSON Value: {_short(item)} not of expected type: string")

    converted = convert(value)
    array = np.empty(_shape_of(converted), dtype=object)
    array[...] = _fill_object(converted, array.shape)
    return array


def _shape_of(value: Any) -> tuple[int, ...]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _fill_object(value: Any, shape: tuple[int, ...]) -> Any:
    flat: list[Any] = []

    def walk(item: Any, depth: int) -> None:
        if depth == len(shape):
            if isinstance(item, list):
                raise InvalidArgument("Ragged string tensor in request")
            flat.append(item)
            return
        if not isinstance(item, list) or len(item) != shape[depth]:
            raise InvalidArgument("Ragged string tensor in request")
        for child in item:
            walk(child, depth + 1)

    walk(value, 0)
    result = np.empty(len(flat), dtype=object)
    result[:] = flat
    return result.reshape(shape)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def render_predict(response: Any, style: str) -> dict[str, Any]:
    """`{"predictions": ...}` (row) or `{"outputs": ...}` (columnar), like MakeJsonFromTensors."""
    values = {
        alias: _json_value(to_numpy(t, alias), alias) for alias, t in response.outputs.items()
    }
    if style == COLUMNAR:
        if len(values) == 1:
            return {"outputs": next(iter(values.values()))}
        return {"outputs": values}
    batch = {
        alias: len(value) if isinstance(value, list) else -1 for alias, value in values.items()
    }
    sizes = set(batch.values())
    if len(sizes) != 1 or -1 in sizes:
        alias = sorted(batch)[0]
        raise InvalidArgument(
            f"Tensor name: {alias} has inconsistent batch size: {batch[alias]} "
            f"expecting: {max(sizes)}"
        )
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = sizes.pop()
    return {"predictions": [{a: v[i] for a, v in values.items()} for i in range(rows)]}


def _json_value(array: np.ndarray, alias: str) -> Any:
    if array.dtype == object:
        as_b64 = alias.endswith("_bytes")
        return _map_nested(array.tolist(), lambda b: _string_out(b, as_b64))
    # json.dumps writes NaN and Infinity as bare tokens, as TF Serving's rapidjson writer does.
    return array.tolist()


def _string_out(value: bytes, as_b64: bool) -> Any:
    if as_b64:
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value.decode("utf-8", errors="replace")


def _map_nested(value: Any, function: Any) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, function) for v in value]
    return function(value)


def status_json(response: Any) -> dict[str, Any]:
    """GetModelStatusResponse as TF Serving prints it (json_name fields, defaults included)."""
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


def metadata_json(response: Any) -> dict[str, Any]:
    """`{"model_spec": ..., "metadata": {"signature_def": ...}}` with proto field names."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return {
        "model_spec": _proto_named_dict(response.model_spec),
        "metadata": {"signature_def": _proto_named_dict(signature_map)},
    }


def _proto_named_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
