"""The Open Inference Protocol's codec (gateway/v2/codec.py): JSON and binary tensor data in,
JSON and binary outputs out, and a 400 naming the field for everything malformed."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from gateway.errors import GatewayError, PayloadTooLarge
from gateway.v2.codec import (
    InputTensor,
    InvalidInferenceRequest,
    OutputTensor,
    bytes_elements,
    flatten,
    float32_data,
    parse_request,
    render_response,
)


def body(obj: dict[str, Any], *chunks: bytes) -> tuple[bytearray, str | None]:
    head = json.dumps(obj).encode()
    if not chunks:
        return bytearray(head), None
    return bytearray(head + b"".join(chunks)), str(len(head))


def framed(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


IMAGES = {"name": "images", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
NO_DATA = {k: v for k, v in IMAGES.items() if k != "data"}


def test_json_request_with_id_outputs_and_parameters() -> None:
    raw, length = body(
        {
            "id": "42",
            "parameters": {"binary_data_output": True},
            "inputs": [IMAGES],
            "outputs": [
                {"name": "probabilities", "parameters": {"classification": 3}},
                {"name": "classes", "parameters": {"binary_data": False}},
            ],
        }
    )
    request = parse_request(raw, length)
    assert not raw  # emptied as read
    assert request.id == "42"
    assert request.binary_output is True
    assert [(o.name, o.binary, o.classification) for o in request.outputs or []] == [
        ("probabilities", None, 3),
        ("classes", False, 0),
    ]
    assert bytes_elements(request.inputs[0], 100) == [b"a", b"b"]


def test_binary_inputs_are_cut_in_order_after_the_json() -> None:
    images = framed(b"\x89PNG one", b"two")
    pixels = struct.pack("<3f", 1.0, 2.5, -3.0)
    raw, length = body(
        {
            "inputs": [
                {**NO_DATA, "parameters": {"binary_data_size": len(images)}},
                {"name": "p", "datatype": "FP32", "shape": [1, 3], "data": [[1, 2, 3]]},
                {
                    "name": "q",
                    "datatype": "FP32",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(pixels)},
                },
            ]
        },
        images,
        pixels,
    )
    first, second, third = parse_request(raw, length).inputs
    assert bytes_elements(first, 100) == [b"\x89PNG one", b"two"]
    assert second.raw is None
    assert float32_data(second) == struct.pack("<3f", 1, 2, 3)
    assert float32_data(third) == pixels


@pytest.mark.parametrize(
    ("obj", "says"),
    [
        ({}, "inputs must be a non-empty list"),
        ({"inputs": [{"name": 1}]}, "string name"),
        ({"inputs": [{**IMAGES, "datatype": "STRING"}]}, "datatype must be one of"),
        ({"inputs": [{**IMAGES, "shape": [-1]}]}, "shape must be a list of integers >= 0"),
        ({"inputs": [{**IMAGES, "shape": [True]}]}, "shape must be"),
        ({"inputs": [NO_DATA]}, "one of the two"),
        ({"inputs": [{**IMAGES, "parameters": {"binary_data_size": 1}}]}, "one of the two"),
        ({"inputs": [IMAGES], "id": 7}, "id must be a string"),
        ({"inputs": [IMAGES], "outputs": {}}, "outputs must be a list"),
        ({"inputs": [IMAGES], "outputs": [{"name": "x", "parameters": []}]}, "must be an object"),
        (
            {"inputs": [IMAGES], "outputs": [{"name": "x", "parameters": {"classification": -1}}]},
            "classification must be an integer >= 0",
        ),
        (
            {"inputs": [IMAGES], "parameters": {"binary_data_output": "yes"}},
            "binary_data_output must be true or false",
        ),
    ],
)
def test_malformed_requests_say_which_field(obj: dict[str, Any], says: str) -> None:
    raw, length = body(obj)
    with pytest.raises(InvalidInferenceRequest, match=says) as caught:
        parse_request(raw, length)
    assert caught.value.status == 400


def test_not_json_is_a_400() -> None:
    with pytest.raises(InvalidInferenceRequest, match="JSON object"):
        parse_request(bytearray(b"\x00\x01 not json"), None)


@pytest.mark.parametrize(
    ("header", "extra", "says"),
    [
        ("abc", b"", "Inference-Header-Content-Length must be a byte count"),
        ("99999", b"", "Inference-Header-Content-Length must be a byte count"),
        (None, b"\x00" * 3, "runs past the body's end"),
        (None, b"\x00" * 5, "1 bytes after the JSON belong to no input"),
    ],
)
def test_binary_framing_errors(header: str | None, extra: bytes, says: str) -> None:
    obj = {"inputs": [{**NO_DATA, "parameters": {"binary_data_size": 4}}]}
    raw, length = body(obj, extra) if extra else body(obj)
    if length is None:
        length = str(len(raw))
    with pytest.raises(InvalidInferenceRequest, match=says):
        parse_request(raw, header or length)


def test_bytes_elements_from_binary_must_frame_exactly() -> None:
    cut = InputTensor("images", "BYTES", (1,), raw=struct.pack("<I", 10) + b"short")
    with pytest.raises(InvalidInferenceRequest, match="runs past its tensor's data"):
        bytes_elements(cut, 100)
    stub = InputTensor("images", "BYTES", (1,), raw=b"\x01\x00")
    with pytest.raises(InvalidInferenceRequest, match="length is cut off"):
        bytes_elements(stub, 100)
    two = InputTensor("images", "BYTES", (1,), raw=framed(b"a", b"b"))
    with pytest.raises(InvalidInferenceRequest, match=r"shape \[1\] \(1 elements\).*holds 2"):
        bytes_elements(two, 100)


def test_json_bytes_are_utf8_text_or_a_base64_data_url() -> None:
    tensor = InputTensor("images", "BYTES", (2,), data=["héllo", "data:image/png;base64,iVBORw=="])
    assert bytes_elements(tensor, 100) == ["héllo".encode(), b"\x89PNG"]
    bad = InputTensor("images", "BYTES", (1,), data=["data:image/png;base64,!!"])
    with pytest.raises(GatewayError, match="not valid base64"):
        bytes_elements(bad, 100)
    large = InputTensor("images", "BYTES", (1,), data=["data:x;base64," + "A" * 400])
    with pytest.raises(PayloadTooLarge):
        bytes_elements(large, 100)
    number = InputTensor("images", "BYTES", (1,), data=[3])
    with pytest.raises(InvalidInferenceRequest, match="must be strings"):
        bytes_elements(number, 100)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([1, "2"], "must be numbers"),
        ([1, True], "must be numbers"),
        ([1e300, 0], "does not fit in FP32"),
        ([float("nan"), 0], "does not fit in FP32"),
        ([1], "holds 1"),
        ("12", "must be a JSON array"),
    ],
)
def test_fp32_json_data_is_checked(data: Any, says: str) -> None:
    tensor = InputTensor("pixels", "FP32", (2,), data=data)
    with pytest.raises(InvalidInferenceRequest, match=says):
        float32_data(tensor)


def test_fp32_binary_data_must_be_whole_floats_of_the_shape() -> None:
    with pytest.raises(InvalidInferenceRequest, match="holds 1"):
        float32_data(InputTensor("pixels", "FP32", (2,), raw=b"\x00" * 4))
    with pytest.raises(InvalidInferenceRequest, match="not whole floats"):
        float32_data(InputTensor("pixels", "FP32", (1,), raw=b"\x00" * 5))


def test_flatten_takes_natural_or_flat_data_at_any_depth() -> None:
    assert flatten([[1, 2], [3, [4, [5]]], []]) == [1, 2, 3, 4, 5]
    deep: list[Any] = [7]
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    assert flatten(deep) == [7]


def test_render_json_and_binary_outputs() -> None:
    scores = OutputTensor("probabilities", "FP32", [1, 2], [0.25, 0.75])
    names = OutputTensor("classes", "BYTES", [1, 2], [b"cat", b"dog"], binary=True)
    data, length = render_response({"model_name": "m", "id": "x"}, [scores, names])
    assert length is not None
    head = json.loads(data[:length])
    assert head["model_name"] == "m"
    assert head["id"] == "x"
    assert head["outputs"][0] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [1, 2],
        "data": [0.25, 0.75],
    }
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 14}
    assert data[length:] == framed(b"cat", b"dog")
    plain, none = render_response({}, [OutputTensor("c", "BYTES", [1], [b"x"])])
    assert none is None
    assert json.loads(plain)["outputs"][0]["data"] == ["x"]
    binary, at = render_response({}, [OutputTensor("p", "FP32", [2], [1.0, 2.0], binary=True)])
    assert binary[at:] == struct.pack("<2f", 1.0, 2.0)
