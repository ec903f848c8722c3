"""Inference bodies of the Open Inference Protocol: a JSON object, optionally followed by the raw
bytes of its tensors (the binary tensor data extension: `Inference-Header-Content-Length` says
where the JSON ends, `binary_data_size` how many bytes each tensor takes, in order). Parsing
checks every field a client sends; rendering writes outputs as JSON or binary, as asked.
No Flask, no model: plain data in and out.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

from gateway.bodies import decode_b64, parse_json
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.membudget import charge_more

HEADER_LENGTH = "Inference-Header-Content-Length"
# Element sizes in bytes (BYTES elements vary: each is a 4-byte length and the bytes).
DATATYPE_SIZES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
}
_LENGTH = struct.Struct("<I")
FLT_MAX = 3.4028234663852886e38
# Memory a number parsed from a JSON body holds: a Python float and its list slot (the body's
# kind, application/json, was charged for the text only).
JSON_NUMBER_BYTES = 32


class InvalidInferenceRequest(BadRequest):
    code = "invalid_inference_request"


@dataclass
class InputTensor:
    """One request input: its data as JSON (`data`) or as bytes cut from the body (`raw`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    raw: bytes | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says
    classification: int = 0  # the classification extension's k; 0: the tensor itself


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output
    id: str | None = None
    binary_output: bool = False


@dataclass
class OutputTensor:
    """One response output: FP32 values (floats) or BYTES values (bytes), flat, row-major."""

    name: str
    datatype: str
    shape: list[int]
    values: list[Any] = field(default_factory=list)
    binary: bool = False


def parse_request(body: bytearray, header_length: str | None) -> InferRequest:
    """The request in `body` (emptied as it is read: the JSON's text, then the tensors' bytes
    are all that is left of it)."""
    json_end = _json_end(header_length, len(body))
    view = memoryview(body)
    head = bytearray(view[:json_end])
    rest = view[json_end:]
    try:
        obj = parse_json(head)
        if not isinstance(obj, dict):
            raise InvalidInferenceRequest("the inference request must be a JSON object")
        request = _request(obj)
        _cut_binary(request.inputs, rest, _binary_sizes(obj))
    finally:
        rest.release()
        view.release()
        body.clear()
    return request


def _json_end(header_length: str | None, total: int) -> int:
    if header_length is None:
        return total
    text = header_length.strip()
    if not text.isascii() or not text.isdigit() or int(text) > total:
        raise InvalidInferenceRequest(
            f"{HEADER_LENGTH} must be a byte count from 0 to the body's length ({total})"
        )
    return int(text)


def _request(obj: dict[str, Any]) -> InferRequest:
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInferenceRequest("inputs must be a non-empty list")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInferenceRequest("id must be a string")
    params = _parameters(obj, "the request")
    outputs = obj.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise InvalidInferenceRequest("outputs must be a list")
    return InferRequest(
        inputs=[_input(item) for item in inputs],
        outputs=None if outputs is None else [_output(item) for item in outputs],
        id=request_id,
        binary_output=_flag(params, "binary_data_output", "the request") or False,
    )


def _input(item: Any) -> InputTensor:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInferenceRequest("each input must be an object with a string name")
    name = item["name"]
    datatype = item.get("datatype")
    if datatype not in DATATYPE_SIZES:
        kinds = ", ".join(DATATYPE_SIZES)
        raise InvalidInferenceRequest(f"input {name!r}: datatype must be one of {kinds}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidInferenceRequest(f"input {name!r}: shape must be a list of integers >= 0")
    params = _parameters(item, f"input {name!r}")
    has_data = "data" in item
    if has_data == ("binary_data_size" in params):
        raise InvalidInferenceRequest(
            f"input {name!r}: give its data either as JSON (data) or as binary "
            "(parameters.binary_data_size), one of the two"
        )
    return InputTensor(name, datatype, tuple(shape), data=item.get("data"))


def _output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInferenceRequest("each output must be an object with a string name")
    name = item["name"]
    params = _parameters(item, f"output {name!r}")
    k = params.get("classification", 0)
    if not _is_count(k):
        raise InvalidInferenceRequest(f"output {name!r}: classification must be an integer >= 0")
    return RequestedOutput(name, _flag(params, "binary_data", f"output {name!r}"), k)


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInferenceRequest(f"{what}: parameters must be an object")
    return params


def _flag(params: dict[str, Any], name: str, what: str) -> bool | None:
    value = params.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidInferenceRequest(f"{what}: parameter {name} must be true or false")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _binary_sizes(obj: dict[str, Any]) -> list[int | None]:
    """Each input's binary_data_size (None: its data is JSON), in the request's order."""
    sizes: list[int | None] = []
    for item in obj["inputs"]:
        size = item.get("parameters", {}).get("binary_data_size")
        if size is not None and not _is_count(size):
            raise InvalidInferenceRequest(
                f"input {item['name']!r}: binary_data_size must be an integer >= 0"
            )
        sizes.append(size)
    return sizes


def _cut_binary(inputs: list[InputTensor], rest: memoryview, sizes: list[int | None]) -> None:
    """Give each binary input its bytes from after the JSON, in order; all must be used."""
    offset = 0
    for tensor, size in zip(inputs, sizes, strict=True):
        if size is None:
            continue
        if offset + size > len(rest):
            raise InvalidInferenceRequest(
                f"input {tensor.name!r}: binary_data_size {size} runs past the body's end "
                f"({len(rest) - offset} bytes left after the JSON; is {HEADER_LENGTH} right?)"
            )
        tensor.raw = bytes(rest[offset : offset + size])
        offset += size
    if offset != len(rest):
        raise InvalidInferenceRequest(
            f"{len(rest) - offset} bytes after the JSON belong to no input "
            f"(binary_data_size of the inputs adds up to {offset})"
        )


def bytes_elements(tensor: InputTensor, max_bytes: int) -> list[bytes]:
    """A BYTES tensor's elements. JSON strings are their UTF-8 bytes, and a `data:` URL with
    base64 (`data:image/png;base64,...`) is its decoded bytes, so images fit in JSON too."""
    if tensor.raw is not None:
        values = _split_bytes(tensor.raw, tensor.name)
    else:
        flat = flatten(tensor.data)
        charge_more(sum(len(v) for v in flat if isinstance(v, str)))  # their bytes, decoded
        values = [_json_bytes(v, tensor.name, max_bytes) for v in flat]
    _check_count(tensor, len(values))
    return values


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    values: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInferenceRequest(f"input {name!r}: a BYTES element's length is cut off")
        (size,) = _LENGTH.unpack_from(raw, offset)
        if offset + 4 + size > len(raw):
            raise InvalidInferenceRequest(
                f"input {name!r}: a BYTES element of {size} bytes runs past its tensor's data"
            )
        values.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return values


def _json_bytes(value: Any, name: str, max_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidInferenceRequest(f"input {name!r}: BYTES elements in JSON must be strings")
    if value.startswith("data:") and ";base64," in value[:256]:
        return decode_b64(value, max_bytes)
    return value.encode("utf-8", "surrogatepass")


def float32_data(tensor: InputTensor) -> bytes:
    """An FP32 tensor's values as little-endian float32 bytes, row-major."""
    if tensor.raw is not None:
        _check_count(tensor, len(tensor.raw) // 4)
        if len(tensor.raw) % 4:
            raise InvalidInferenceRequest(f"input {tensor.name!r}: FP32 data is not whole floats")
        return tensor.raw
    flat = flatten(tensor.data)
    charge_more(len(flat) * JSON_NUMBER_BYTES)
    values = array("f")
    for value in flat:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidInferenceRequest(f"input {tensor.name!r}: FP32 elements must be numbers")
        if not abs(value) <= FLT_MAX:  # also NaN and the infinities Python's JSON reads
            raise InvalidInferenceRequest(f"input {tensor.name!r}: {value} does not fit in FP32")
        values.append(value)
    _check_count(tensor, len(values))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def _check_count(tensor: InputTensor, count: int) -> None:
    if count != tensor.count:
        shape = list(tensor.shape)
        raise InvalidInferenceRequest(
            f"input {tensor.name!r} has shape {shape} ({tensor.count} elements) but its data "
            f"holds {count}"
        )


def flatten(data: Any) -> list[Any]:
    """Tensor data as given in JSON, natural (nested lists) or flat, as one flat list."""
    if not isinstance(data, list):
        raise InvalidInferenceRequest("tensor data must be a JSON array")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def render_response(head: dict[str, Any], outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary data follows it (else None)."""
    chunks: list[bytes] = []
    rendered = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if output.binary:
            chunk = _binary(output)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _json_values(output)
        rendered.append(entry)
    text = json.dumps({**head, "outputs": rendered}, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def _binary(output: OutputTensor) -> bytes:
    if output.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(v)) + v for v in output.values)
    values = array("f", output.values)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def _json_values(output: OutputTensor) -> list[Any]:
    if output.datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in output.values]
    return list(output.values)


def check_size(values: list[bytes], max_bytes: int, name: str) -> None:
    """413 for an element over the image size limit (DYNOSERVE_MAX_IMAGE_BYTES)."""
    for value in values:
        if len(value) > max_bytes:
            raise PayloadTooLarge(
                f"input {name!r}: an element of {len(value)} bytes is over the {max_bytes} "
                "byte limit for an image"
            )
