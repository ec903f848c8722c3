"""What a model's signature asks for: the input plan the gateway follows, a JSON view of it, and
the check that every tensor built matches the signature before any Predict call.

Stock TF Serving runs the same TensorFlow kernels as Python TF, and some of them (oneDNN's on
most cloud CPUs) abort the whole process on a wrong-rank input; so nothing that disagrees with
the signature read from the model server is ever sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway._proto.dynoserve.tensorflow import tensor_pb2, types_pb2
from gateway.client import DECODED_OUTPUT, Signature, TensorSpec
from gateway.errors import BadRequest, ModelServerError


@dataclass(frozen=True)
class InputPlan:
    """How to feed a signature: encoded bytes to a string input, or resized float pixels.
    `tolerant`: the encoded-input graph reports each image's failed decode in its row of
    DECODED_OUTPUT instead of failing the batch, so the gateway need not decode to vet."""

    key: str
    kind: str  # "encoded" or "pixels"
    height: int = 0
    width: int = 0
    tolerant: bool = False


def input_plan(signature: Signature) -> InputPlan:
    """Decide from the signature's single input what the gateway must send."""
    if len(signature.inputs) != 1:
        raise ModelServerError(
            f"signature {signature.name!r} takes {len(signature.inputs)} inputs; "
            "the gateway feeds exactly one image input",
            code="unsupported_model",
        )
    key, spec = next(iter(signature.inputs.items()))
    shape = spec.shape
    if spec.dtype == "DT_STRING" and (shape is None or len(shape) == 1):
        return InputPlan(key, "encoded", tolerant=reports_decode_failures(signature))
    shape = shape or ()
    if spec.dtype == "DT_FLOAT" and len(shape) == 4 and shape[3] == 3 and min(shape[1:3]) > 0:
        return InputPlan(key, "pixels", height=shape[1], width=shape[2])
    raise ModelServerError(
        f"signature {signature.name!r} input {key!r} is {spec.dtype} {_shape_text(shape)}; "
        "expected DT_STRING [-1] images or DT_FLOAT [-1, H, W, 3] pixels",
        code="unsupported_model",
    )


def reports_decode_failures(signature: Signature) -> bool:
    """Whether the signature answers DT_BOOL DECODED_OUTPUT, one value per image (rank 1)."""
    spec = signature.outputs.get(DECODED_OUTPUT)
    if spec is None or spec.dtype != "DT_BOOL":
        return False
    return spec.shape is not None and len(spec.shape) == 1


def check_tensor(key: str, spec: TensorSpec, tensor: tensor_pb2.TensorProto) -> None:
    """Raise unless `tensor` has the dtype, rank and every fixed dimension `spec` declares.

    A fixed batch dimension the request does not fill is the caller's to fix (400); any other
    mismatch means the gateway cannot feed this model (502 unsupported_model).
    """
    dtype = _dtype_name(tensor.dtype)
    dims = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    wanted = spec.shape
    if dtype == spec.dtype and (wanted is None or _fits(dims, wanted)):
        return
    if dtype == spec.dtype and wanted and len(wanted) == len(dims) and _fits(dims[1:], wanted[1:]):
        raise BadRequest(
            f"this model takes exactly {wanted[0]} image(s) per request (input {key!r} is "
            f"{_shape_text(wanted)}); the request has {dims[0]}",
            code="batch_size_mismatch",
        )
    raise ModelServerError(
        f"the gateway would send input {key!r} as {dtype} {_shape_text(dims)} but the signature "
        f"declares {spec.dtype} {_shape_text(wanted)}; nothing was sent",
        code="unsupported_model",
    )


def _fits(dims: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """Same rank, and every fixed (non-negative) dimension equal."""
    if len(dims) != len(wanted):
        return False
    return all(w < 0 or w == d for d, w in zip(dims, wanted, strict=True))


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "(unknown rank)" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def describe_signature(signature: Signature) -> tuple[dict[str, object], int | None]:
    """A JSON-ready view of a signature, and the number of classes it ranks."""

    def tensors(specs: dict[str, TensorSpec]) -> dict[str, object]:
        return {
            k: {"dtype": s.dtype, "shape": list(s.shape) if s.shape is not None else None}
            for k, s in sorted(specs.items())
        }

    plan = input_plan(signature)
    scores = signature.outputs.get("probabilities")
    num_classes = scores.shape[-1] if scores and scores.shape and scores.shape[-1] > 0 else None
    view: dict[str, object] = {
        "name": signature.name,
        "input_kind": plan.kind,
        "inputs": tensors(dict(signature.inputs)),
        "outputs": tensors(dict(signature.outputs)),
    }
    if plan.kind == "pixels":
        view["input_size"] = [plan.height, plan.width]
    # Who proves an image's data decodes: the model (its `decoded` output) or the gateway.
    view["decode_check"] = "model" if plan.tolerant else "gateway"
    return view, num_classes
