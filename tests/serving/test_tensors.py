"""TensorProto reading as Tensor::FromProto does, and the refusals that come before allocating."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.local.errors import InvalidArgument
from serving.local.tensors import MAX_IMPLIED_BYTES, check_proto, dtype_name, format_shape, to_numpy


def _tensor(dtype: int, *dims: int) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        tensor.tensor_shape.dim.add().size = size
    return tensor


def test_typed_values_fill_as_tf_does() -> None:
    none = _tensor(types_pb2.DT_FLOAT, 2, 2)
    np.testing.assert_array_equal(to_numpy(none, "x"), np.zeros((2, 2), np.float32))
    few = _tensor(types_pb2.DT_INT32, 4)
    few.int_val.extend([1, 2])
    np.testing.assert_array_equal(to_numpy(few, "x"), [1, 2, 2, 2])
    extra = _tensor(types_pb2.DT_FLOAT, 2)
    extra.float_val.extend([1, 2, 3])
    np.testing.assert_array_equal(to_numpy(extra, "x"), [1, 2])
    narrow = _tensor(types_pb2.DT_UINT8, 2)
    narrow.int_val.extend([257, -1])  # int_val carries uint8; C++ narrows with a cast
    np.testing.assert_array_equal(to_numpy(narrow, "x"), [1, 255])


def test_string_tensor_content_uses_tfs_varint_layout() -> None:
    tensor = _tensor(types_pb2.DT_STRING, 2)
    tensor.tensor_content = bytes([3, 0]) + b"abc"
    assert to_numpy(tensor, "s").tolist() == [b"abc", b""]
    tensor.tensor_content = bytes([3, 9]) + b"abc"
    with pytest.raises(InvalidArgument, match=r"tensor parsing error: s$"):
        to_numpy(tensor, "s")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: setattr(t, "tensor_content", b"\0" * 7),  # not 2 floats
        lambda t: t.tensor_shape.dim.add(size=-3),
        lambda t: setattr(t.tensor_shape, "unknown_rank", True),
        lambda t: setattr(t, "dtype", 999),
        lambda t: setattr(t, "dtype", types_pb2.DT_FLOAT_REF),
        lambda t: [t.tensor_shape.dim.add(size=2**62) for _ in range(2)],
    ],
    ids=["content-length", "negative-dim", "unknown-rank", "dtype-enum", "ref-dtype", "overflow"],
)
def test_what_from_proto_refuses_is_a_parsing_error(mutate: object) -> None:
    tensor = _tensor(types_pb2.DT_FLOAT, 2)
    mutate(tensor)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=r"tensor parsing error: x$"):
        check_proto(tensor, "x")
    with pytest.raises(InvalidArgument, match=r"tensor parsing error: x$"):
        to_numpy(tensor, "x")


def test_a_few_bytes_cannot_declare_a_huge_tensor() -> None:
    tensor = _tensor(types_pb2.DT_FLOAT, MAX_IMPLIED_BYTES // 4 + 1)
    tensor.float_val.append(1.0)
    with pytest.raises(InvalidArgument, match="carries 1 values; at most 67108864 bytes"):
        to_numpy(tensor, "x")
    empty_rows = _tensor(types_pb2.DT_FLOAT, 0, 10**12)
    assert to_numpy(empty_rows, "x").shape == (0, 10**12)


def test_names_as_tf_prints_them() -> None:
    assert dtype_name(types_pb2.DT_STRING) == "string"
    assert dtype_name(999) == "unknown dtype enum (999)"
    assert format_shape((-1, 32, 32, 3)) == "[?,32,32,3]"
    assert format_shape(()) == "[]"
