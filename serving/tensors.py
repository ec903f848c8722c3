"""TensorProto <-> numpy, the way TF Serving fills responses (typed *_val fields, AsProtoField)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import InvalidArgument

# numpy dtype -> (DataType enum, TensorProto field that holds the values)
_FIELD_FOR_DTYPE: dict[np.dtype[Any], tuple[int, str]] = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}

_NUMPY_FOR_ENUM: dict[int, np.dtype[Any]] = {
    enum: dtype for dtype, (enum, _) in _FIELD_FOR_DTYPE.items()
}
_FIELD_FOR_ENUM: dict[int, str] = dict(_FIELD_FOR_DTYPE.values())


def dtype_name(enum: int) -> str:
    """'string', 'float'... as TF's DataTypeString prints a DataType."""
    return str(types_pb2.DataType.Name(enum)).removeprefix("DT_").lower()


def to_numpy(proto: Any, alias: str) -> np.ndarray:
    """The array a TensorProto describes; INVALID_ARGUMENT when it is inconsistent."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    try:
        if proto.dtype == types_pb2.DT_STRING:
            values = np.empty(len(proto.string_val), dtype=object)
            values[:] = list(proto.string_val)
            return _fill(values, shape, count)
        dtype = _NUMPY_FOR_ENUM.get(proto.dtype)
        if dtype is None:
            return _generic(proto)
        if proto.tensor_content:
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        field = getattr(proto, _FIELD_FOR_ENUM[proto.dtype])
        return _fill(np.asarray(field, dtype=dtype), shape, count)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"tensor parsing error: {alias}") from exc


def _fill(values: np.ndarray, shape: tuple[int, ...], count: int) -> np.ndarray:
    # TF's Tensor::FromProto repeats the last value when fewer values than elements are given.
    if values.size == count:
        return values.reshape(shape)
    if values.size == 0 or values.size > count:
        raise ValueError("value count does not match shape")
    padded = np.concatenate([values, np.repeat(values[-1:], count - values.size)])
    return padded.reshape(shape)


def _generic(proto: Any) -> np.ndarray:
    import tensorflow as tf

    return np.asarray(tf.make_ndarray(proto))


def to_proto(array: np.ndarray) -> Any:
    """A TensorProto with values in the typed repeated field, as Tensor::AsProtoField writes."""
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.CopyFrom(_shape_proto(array.shape))
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(_as_bytes(v) for v in array.ravel())
        return proto
    entry = _FIELD_FOR_DTYPE.get(array.dtype)
    if entry is None:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    proto.dtype = entry[0]
    getattr(proto, entry[1]).extend(array.ravel().tolist())
    return proto


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _shape_proto(shape: tuple[int, ...]) -> Any:
    proto = tensor_shape_pb2.TensorShapeProto()
    for size in shape:
        proto.dim.add().size = int(size)
    return proto
