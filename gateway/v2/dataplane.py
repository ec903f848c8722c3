"""The Open Inference Protocol's work, on the gateway's one prediction path: a /v2 model is a
served model, its inputs are the image inputs of its signatures (encoded images as BYTES, float
pixels as FP32), its outputs those of the configured signature. Inference goes through the same
Predictor (admission, fair shares, memory budget, deadlines, metrics) as the image-URL API.
No Flask here."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gateway import __version__
from gateway.client import Signature, TensorSpec, VersionMetadata
from gateway.deadline import Deadline
from gateway.errors import GatewayError, InvalidParameter, LabelNotFound
from gateway.interface import ImageInput, Predictor, PredictRequest, PredictResult, Score
from gateway.settings import Settings
from gateway.signatures import InputPlan, input_plan
from gateway.v2.codec import (
    InferRequest,
    InputTensor,
    InvalidInferenceRequest,
    OutputTensor,
    RequestedOutput,
    bytes_elements,
    check_size,
    float32_data,
)
from modelrepo.api import LABEL_RULE, MAX_VERSION, is_label, parse_number

SERVER_NAME = "dynoserve"
EXTENSIONS = ("binary_tensor_data", "classification")
PLATFORM = "tensorflow_savedmodel"
# TF Serving's dtypes by their Open Inference Protocol names.
DATATYPES = {
    "DT_BOOL": "BOOL",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_HALF": "FP16",
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
    "DT_STRING": "BYTES",
}
# What the gateway feeds each kind of input plan.
PLAN_DATATYPES = {"encoded": "BYTES", "pixels": "FP32"}


@dataclass(frozen=True)
class Caller:
    """Who asks, for the predictor: request id, fair-share identity, deadline, and the key
    that keeps the client on one version under weighted rollouts (docs/rollouts.md)."""

    request_id: str = ""
    client: str = ""
    deadline: Deadline | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class ImageInputChoice:
    """The signature a /v2 input name feeds."""

    signature: str
    spec: TensorSpec
    plan: InputPlan


@dataclass
class InferAnswer:
    model: str
    version: int | None
    outputs: list[OutputTensor]


def selector(version: str | None) -> tuple[int | None, str | None]:
    """The URL's version segment: a version number, or a label (stable, canary) in its place."""
    if version is None:
        return None, None
    number = parse_number(version, MAX_VERSION)
    if number is not None:
        return number, None
    if is_label(version):
        return None, version
    raise InvalidParameter(
        f"the version must be a number from 1 to {MAX_VERSION}, or a label ({LABEL_RULE})"
    )


class DataPlane:
    """The protocol's calls on top of a Predictor; thread-safe as the Predictor is."""

    def __init__(self, predictor: Predictor, settings: Settings) -> None:
        self.predictor = predictor
        self.settings = settings

    def server_metadata(self) -> dict[str, object]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def server_ready(self) -> bool:
        return self.predictor.readiness().ready

    def model_ready(self, model: str, version: str | None, caller: Caller) -> bool:
        """Whether the version (the latest, a number or a label) is AVAILABLE; 404 for unknown."""
        number, label = selector(version)
        info = self.predictor.describe(model, caller.request_id)
        if label is not None:
            if label not in info.labels:
                listed = ", ".join(sorted(info.labels)) or "none"
                raise LabelNotFound(
                    f"model {model!r} has no version labelled {label!r}; labels: {listed}"
                )
            number = info.labels[label]
        states = {v.version: v.state for v in info.versions}
        if number is not None:
            return states.get(number) == "AVAILABLE"
        return label is None and "AVAILABLE" in states.values()

    def model_metadata(self, model: str, version: str | None, caller: Caller) -> dict[str, object]:
        meta = self._metadata(model, version, caller)
        info = self.predictor.describe(model, caller.request_id)
        available = [str(v.version) for v in info.versions if v.state == "AVAILABLE"]
        inputs = image_inputs(meta, self.settings.signature_name)
        signature = _output_signature(meta, inputs, self.settings.signature_name)
        # Only the outputs infer answers with (not e.g. `decoded`, which the gateway consumes).
        served = {_scores_name(signature), _classes_name(signature)}
        outputs = sorted((n, s) for n, s in signature.outputs.items() if n in served)
        return {
            "name": model,
            "versions": available,
            "platform": PLATFORM,
            "inputs": [_tensor_view(name, choice.spec) for name, choice in inputs.items()],
            "outputs": [_tensor_view(name, spec) for name, spec in outputs],
        }

    def infer(
        self, model: str, version: str | None, request: InferRequest, caller: Caller
    ) -> InferAnswer:
        number, label = selector(version)
        meta = self._metadata(model, version, caller)
        tensor, choice = self._input(meta, request)
        signature = meta.signatures[choice.signature]
        wanted = requested_outputs(request, signature)
        images = self._images(tensor, choice)
        predict = PredictRequest(
            model,
            images,
            number,
            label,
            sys.maxsize,  # every class, in order of score: the outputs are whole rows
            caller.request_id,
            caller.client,
            caller.deadline,
            signature=choice.signature,
            client_key=caller.client_key,
        )
        result = self.predictor.predict(predict)
        return InferAnswer(model, result.version, render_outputs(result, signature, wanted))

    def _metadata(self, model: str, version: str | None, caller: Caller) -> VersionMetadata:
        number, label = selector(version)
        probe = PredictRequest(
            model,
            (),
            number,
            label,
            1,
            caller.request_id,
            caller.client,
            caller.deadline,
            client_key=caller.client_key,
        )
        return self.predictor.version_metadata(probe)

    def _input(
        self, meta: VersionMetadata, request: InferRequest
    ) -> tuple[InputTensor, ImageInputChoice]:
        """The request's one input, and the signature its name feeds."""
        if len(request.inputs) != 1:
            raise InvalidInferenceRequest(
                f"give exactly one input (the model's image inputs: {_input_list(meta, self)})"
            )
        tensor = request.inputs[0]
        choice = image_inputs(meta, self.settings.signature_name).get(tensor.name)
        if choice is None:
            raise InvalidInferenceRequest(
                f"model {meta.model!r} has no input {tensor.name!r}; its inputs: "
                f"{_input_list(meta, self)} (one of them per request)"
            )
        return tensor, choice

    def _images(self, tensor: InputTensor, choice: ImageInputChoice) -> tuple[ImageInput, ...]:
        """The input's images: encoded ones as they come, pixel ones cut per image."""
        expected = PLAN_DATATYPES[choice.plan.kind]
        if tensor.datatype != expected:
            raise InvalidInferenceRequest(
                f"input {tensor.name!r} takes {expected}, not {tensor.datatype}"
            )
        _check_shape(tensor, choice.spec, self.settings.max_batch)
        if choice.plan.kind == "encoded":
            values = bytes_elements(tensor, self.settings.max_image_bytes)
            check_size(values, self.settings.max_image_bytes, tensor.name)
            return tuple(ImageInput(data=value) for value in values)
        pixels = float32_data(tensor)
        size = len(pixels) // max(1, tensor.shape[0])
        return tuple(
            ImageInput(data=pixels[i * size : (i + 1) * size], pixels=True)
            for i in range(tensor.shape[0])
        )


def image_inputs(meta: VersionMetadata, preferred: str) -> dict[str, ImageInputChoice]:
    """Each image input a version's signatures take, by name: the configured signature's
    first, then the others' by signature name (the first signature taking a name feeds it)."""
    names = [preferred, *sorted(n for n in meta.signatures if n != preferred)]
    choices: dict[str, ImageInputChoice] = {}
    for name in names:
        signature = meta.signatures.get(name)
        if signature is None:
            continue
        try:
            plan = input_plan(signature)
        except GatewayError:
            continue  # not an image signature the gateway can feed
        choices.setdefault(plan.key, ImageInputChoice(name, signature.inputs[plan.key], plan))
    return choices


def _output_signature(
    meta: VersionMetadata, inputs: dict[str, ImageInputChoice], preferred: str
) -> Signature:
    if preferred in meta.signatures and any(c.signature == preferred for c in inputs.values()):
        return meta.signatures[preferred]
    first = next(iter(inputs.values()), None)
    if first is None:
        return Signature(preferred, {}, {})
    return meta.signatures[first.signature]


def _input_list(meta: VersionMetadata, plane: DataPlane) -> str:
    inputs = image_inputs(meta, plane.settings.signature_name)
    return (
        ", ".join(
            f"{name} ({PLAN_DATATYPES[c.plan.kind]} {_shape(c.spec)})" for name, c in inputs.items()
        )
        or "none the gateway can feed"
    )


def _tensor_view(name: str, spec: TensorSpec) -> dict[str, object]:
    return {"name": name, "datatype": DATATYPES.get(spec.dtype, spec.dtype), "shape": _shape(spec)}


def _shape(spec: TensorSpec) -> list[int]:
    return [-1] if spec.shape is None else [max(-1, d) for d in spec.shape]


def _check_shape(tensor: InputTensor, spec: TensorSpec, max_batch: int) -> None:
    """The shape must have the signature's rank and fixed dimensions, and a batch of 1 to
    max_batch images (what the image-URL API takes too)."""
    wanted = _shape(spec)
    shape = list(tensor.shape)
    fits = len(shape) == len(wanted) and all(
        w < 0 or w == d for d, w in zip(shape, wanted, strict=True)
    )
    if not fits or not shape:
        raise InvalidInferenceRequest(
            f"input {tensor.name!r} has shape {shape}; the model takes {wanted} (-1: any size)"
        )
    if not 1 <= shape[0] <= max_batch:
        raise InvalidInferenceRequest(
            f"input {tensor.name!r}: a request carries 1 to {max_batch} images; this one {shape[0]}"
        )


# --- outputs ----------------------------------------------------------------------------------


def _scores_name(signature: Signature) -> str | None:
    """The output the predictor ranks: `probabilities`, else the first float output."""
    if "probabilities" in signature.outputs:
        return "probabilities"
    floats = sorted(k for k, s in signature.outputs.items() if s.dtype == "DT_FLOAT")
    return floats[0] if floats else None


def _classes_name(signature: Signature) -> str | None:
    spec = signature.outputs.get("classes")
    return "classes" if spec is not None and spec.dtype == "DT_STRING" else None


def requested_outputs(request: InferRequest, signature: Signature) -> list[RequestedOutput]:
    """The outputs to answer with: those asked for (each once, each one the gateway serves),
    or all of them in name order."""
    served = sorted(n for n in (_scores_name(signature), _classes_name(signature)) if n)
    if request.outputs is None:
        return [RequestedOutput(n, request.binary_output) for n in served]
    seen: set[str] = set()
    for output in request.outputs:
        if output.name not in served:
            listed = ", ".join(served)
            raise InvalidInferenceRequest(f"no output {output.name!r}; outputs: {listed}")
        if output.name in seen:
            raise InvalidInferenceRequest(f"output {output.name!r} is asked for twice")
        seen.add(output.name)
        if output.classification and output.name != _scores_name(signature):
            raise InvalidInferenceRequest(
                f"classification applies to the scores output ({_scores_name(signature)}), "
                f"not {output.name!r}"
            )
    return [
        RequestedOutput(
            o.name, request.binary_output if o.binary is None else o.binary, o.classification
        )
        for o in request.outputs
    ]


def render_outputs(
    result: PredictResult, signature: Signature, wanted: list[RequestedOutput]
) -> list[OutputTensor]:
    """The model's rows, rebuilt from the ranked answer (every class, in score order): scores
    and class names by class index, or the k best as "<score>:<index>:<label>"."""
    for item in result.items:
        if item.error is not None:  # the protocol has no per-image errors: one fails all
            raise item.error
    ranked = [item.predictions or [] for item in result.items]
    scores_name = _scores_name(signature)
    outputs = []
    for want in wanted:
        if want.classification:
            output = _classification(want.name, ranked, want.classification)
        else:
            output = _rows(want.name, ranked, scores=want.name == scores_name)
        output.binary = bool(want.binary)
        outputs.append(output)
    return outputs


def _classification(name: str, ranked: list[list[Score]], k: int) -> OutputTensor:
    """The classification extension: BYTES [batch, k], best first (k at most the classes)."""
    k = min(k, max((len(r) for r in ranked), default=0))
    values = [f"{s.score:f}:{s.class_id}:{s.label}".encode() for r in ranked for s in r[:k]]
    return OutputTensor(name, "BYTES", [len(ranked), k], list(values))


def _rows(name: str, ranked: list[list[Score]], scores: bool) -> OutputTensor:
    """Scores (FP32) or class names (BYTES), [batch, classes], in class order."""
    width = max((len(r) for r in ranked), default=0)
    empty: float | bytes = 0.0 if scores else b""
    rows: list[list[float | bytes]] = [[empty] * width for _ in ranked]
    for row, ranking in zip(rows, ranked, strict=True):
        for s in ranking:
            row[s.class_id] = s.score if scores else s.label.encode()
    flat = [value for row in rows for value in row]
    return OutputTensor(name, "FP32" if scores else "BYTES", [len(ranked), width], flat)
