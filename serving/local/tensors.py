"""TensorProto <-> numpy, the way TF's Tensor::FromProto reads and Tensor::AsProtoField writes.

Reading is split so nothing is allocated for a request that is going to be refused:
`check_proto` is FromProto's own validity checks (shape, dtype, tensor_content length),
`dense_bytes` is what the tensor will take once materialised, `to_numpy` materialises it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.local.errors import InvalidArgument

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
# DataType.values() builds a new list on every call: once per input of every Predict was
# measurable on the request path.
_KNOWN_DTYPES = frozenset(types_pb2.DataType.values())

# TensorShape::MaxDimensions() and the element count a TensorShape can hold (int64).
MAX_DIMENSIONS = 254
MAX_ELEMENTS = 2**63 - 1
# The largest dense input a request may ask for: the largest message either transport accepts
# (TF Serving's kint32max).
MAX_TENSOR_BYTES = 2**31 - 1
# TF's "repeat the last value" rule lets a few bytes declare a huge tensor. Stock TF Serving
# allocates whatever the shape says; here a tensor that relies on that rule may not exceed this,
# so a 20-byte request cannot make a dyno allocate gigabytes (docs/serving.md).
MAX_IMPLIED_BYTES = 64 * 2**20
# Bytes per element of a string tensor before its payloads (one reference each).
_STRING_ELEMENT_BYTES = 8


def dtype_name(enum: int) -> str:
    """'string', 'float'... as TF's DataTypeString prints a DataType."""
    if enum not in _KNOWN_DTYPES:
        return f"unknown dtype enum ({enum})"
    return str(types_pb2.DataType.Name(enum)).removeprefix("DT_").lower()


def format_shape(dims: tuple[int, ...] | None) -> str:
    """`[?,32,32,3]` as TensorShape::DebugString prints a partial shape; `<unknown>` rank."""
    if dims is None:
        return "<unknown>"
    return "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"


def parse_error(alias: str) -> InvalidArgument:
    """TF Serving's answer when Tensor::FromProto refuses an input (GetInputValues)."""
    return InvalidArgument(f"tensor parsing error: {alias}")


def shape_of(proto: Any) -> tuple[int, ...]:
    """The dims a TensorProto declares (already checked by check_proto)."""
    return tuple(d.size for d in proto.tensor_shape.dim)


def check_proto(proto: Any, alias: str) -> None:
    """Tensor::FromProto's refusals, without allocating: shape, dtype, tensor_content size."""
    shape = proto.tensor_shape
    if shape.unknown_rank or len(shape.dim) > MAX_DIMENSIONS:
        raise parse_error(alias)
    dims = shape_of(proto)
    if any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
        raise parse_error(alias)
    if proto.dtype == types_pb2.DT_INVALID or proto.dtype not in _KNOWN_DTYPES:
        raise parse_error(alias)
    if proto.dtype >= 100:  # reference types (DT_FLOAT_REF...) are never values
        raise parse_error(alias)
    count = math.prod(dims)
    dtype = _NUMPY_FOR_ENUM.get(proto.dtype)
    content = proto.tensor_content
    if count and dtype is not None and content and len(content) != count * dtype.itemsize:
        raise parse_error(alias)


def dense_bytes(proto: Any) -> int:
    """Bytes the materialised tensor takes (strings: one reference each plus the payloads)."""
    count = math.prod(shape_of(proto))
    if proto.dtype == types_pb2.DT_STRING:
        payload = sum(len(v) for v in proto.string_val) + len(proto.tensor_content)
        return count * _STRING_ELEMENT_BYTES + payload
    dtype = _NUMPY_FOR_ENUM.get(proto.dtype)
    return count * (dtype.itemsize if dtype is not None else 16)


def check_size(proto: Any, alias: str) -> None:
    """INVALID_ARGUMENT for a tensor too large to materialise (see MAX_IMPLIED_BYTES)."""
    size = dense_bytes(proto)
    implied = _values_given(proto) < math.prod(shape_of(proto))
    limit = MAX_IMPLIED_BYTES if implied else MAX_TENSOR_BYTES
    if size > limit:
        raise InvalidArgument(
            f"tensor {alias} of shape {format_shape(shape_of(proto))} would take {size} bytes "
            f"but carries {_values_given(proto)} values; at most {limit} bytes are accepted"
        )


def _values_given(proto: Any) -> int:
    if proto.dtype == types_pb2.DT_STRING:
        return len(proto.string_val) if not proto.tensor_content else math.prod(shape_of(proto))
    field = _FIELD_FOR_ENUM.get(proto.dtype)
    if proto.tensor_content or field is None:
        return math.prod(shape_of(proto))
    return len(getattr(proto, field))


def to_numpy(proto: Any, alias: str, checked: bool = False) -> np.ndarray:
    """The array a TensorProto describes, filled as Tensor::FromProto fills it.

    INVALID_ARGUMENT "tensor parsing error" where FromProto would fail, and from check_size;
    `checked`: the caller ran check_proto and check_size on it already (predict.prepare).
    """
    if not checked:
        check_proto(proto, alias)
        check_size(proto, alias)
    shape = shape_of(proto)
    count = math.prod(shape)
    try:
        if proto.dtype == types_pb2.DT_STRING:
            return _fill(_string_values(proto, count), shape, count, b"")
        dtype = _NUMPY_FOR_ENUM.get(proto.dtype)
        if dtype is None:
            return _generic(proto)
        if not count:
            return np.zeros(shape, dtype=dtype)
        if proto.tensor_content:
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        field = getattr(proto, _FIELD_FOR_ENUM[proto.dtype])
        return _fill(_typed_values(field, dtype), shape, count, dtype.type(0))
    except (ValueError, TypeError, OverflowError) as exc:
        raise parse_error(alias) from exc


def _typed_values(field: Any, dtype: np.dtype[Any]) -> np.ndarray:
    # int_val carries int8/16 and uint8/16 as int32: narrow as C++'s static_cast does.
    if dtype.kind in "iu" and dtype.itemsize < 4:
        return np.asarray(field, dtype=np.int64).astype(dtype)
    return np.asarray(field, dtype=dtype)


def _string_values(proto: Any, count: int) -> np.ndarray:
    if proto.tensor_content and count:
        strings = _decode_string_content(proto.tensor_content, count)
    else:
        strings = list(proto.string_val)
    values = np.empty(len(strings), dtype=object)
    values[:] = strings
    return values


def _decode_string_content(content: bytes, count: int) -> list[bytes]:
    """TF's EncodeStringList layout: `count` lengths as varints, then the bytes back to back."""
    lengths: list[int] = []
    position = 0
    for _ in range(count):
        length, position = _varint(content, position)
        lengths.append(length)
    if position + sum(lengths) != len(content):
        raise ValueError("string tensor_content does not match its shape")
    strings = []
    for length in lengths:
        strings.append(content[position : position + length])
        position += length
    return strings


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(data) and shift < 35:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("bad varint in string tensor_content")


def _fill(values: np.ndarray, shape: tuple[int, ...], count: int, default: Any) -> np.ndarray:
    # FromProtoField: no values -> the type's default; extra values are ignored; fewer values
    # than elements -> the last one repeated.
    if values.size == 0:
        values = np.full(1, default, dtype=values.dtype)
    if values.size >= count:
        return values[:count].reshape(shape)
    padded = np.concatenate([values, np.repeat(values[-1:], count - values.size)])
    return padded.reshape(shape)


def _generic(proto: Any) -> np.ndarray:
    import tensorflow as tf

    try:
        return np.asarray(tf.make_ndarray(proto))
    except Exception as exc:  # whatever TF's converter dislikes is a parsing error
        raise ValueError(str(exc)) from exc


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
