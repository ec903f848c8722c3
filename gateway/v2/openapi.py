"""The /v2 routes in the gateway's OpenAPI document (gateway/openapi.py merges them in): the
Open Inference Protocol's paths, its `{"error": "<message>"}` errors, and its bodies."""

from __future__ import annotations

from typing import Any

from gateway.rollouts import CLIENT_KEY_HEADER, CLIENT_KEY_PARAM, VERSION_HEADER
from gateway.v2.codec import DATATYPE_SIZES, HEADER_LENGTH
from modelrepo.api import model_name_pattern, version_or_label_pattern
from modelrepo.rollouts import MAX_CLIENT_KEY_CHARS

_JSON = "application/json"
_BINARY = "application/octet-stream"

_ERRORS = {
    "400": "Malformed request, tensor, shape or parameter; a key given twice in one JSON object, "
    "at any depth",
    "401": "Missing or wrong API key (only when keys are configured)",
    "404": "Unknown model, version or label",
    "413": "Body or image too large",
    "415": "An element of the BYTES input is not an image in a supported format",
    "422": "An image could not be decoded",
    "429": "This client holds more than its fair share (client_over_share); see Retry-After",
    "502": "The model server failed",
    "503": "Model not ready, gateway overloaded or its memory budget taken; see Retry-After",
    "504": "The request's deadline ran out",
}
_MODEL = {
    "name": "model",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": model_name_pattern()},
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "A version number, or a version label (stable, canary) in its place.",
    "schema": {"type": "string", "pattern": version_or_label_pattern()},
}

# Weighted rollouts (docs/rollouts.md): the key that keeps a client on one version; /v1's
# predict routes take the same two (gateway/openapi.py).
CLIENT_KEY_PARAMS = [
    {
        "name": CLIENT_KEY_PARAM,
        "in": "query",
        "description": "Weighted rollouts (docs/rollouts.md): the client's key; it picks the "
        f"same version on every dyno. Wins over the {CLIENT_KEY_HEADER} header, which wins "
        "over the API key; without any, each request draws at random. A pinned version "
        "ignores it.",
        "schema": {"type": "string", "maxLength": MAX_CLIENT_KEY_CHARS},
    },
    {
        "name": CLIENT_KEY_HEADER,
        "in": "header",
        "description": f"The client key, when the {CLIENT_KEY_PARAM} query parameter is absent.",
        "schema": {"type": "string", "maxLength": MAX_CLIENT_KEY_CHARS},
    },
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: str) -> dict[str, Any]:
    body = {_JSON: {"schema": _ref("V2Error")}}
    return {code: {"description": _ERRORS[code], "content": body} for code in codes}


def _get(op: str, summary: str, ok: dict[str, Any], *codes: str, **more: Any) -> dict[str, Any]:
    responses = {"200": {"description": "OK", "content": {_JSON: {"schema": ok}}}}
    return {
        "get": {
            "summary": summary,
            "operationId": op,
            "tags": ["Open Inference Protocol"],
            **more,
            "responses": {**responses, **_errors(*codes)},
        }
    }


def _ready(op: str, summary: str, schema: dict[str, Any], *codes: str, **more: Any) -> Any:
    path = _get(op, summary, schema, *codes, **more)
    path["get"]["responses"]["503"] = {
        "description": "Not ready",
        "content": {_JSON: {"schema": schema}},
    }
    return path


def _infer(op: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    header = {
        "name": HEADER_LENGTH,
        "in": "header",
        "required": False,
        "description": "Binary tensor data extension: the JSON's length; tensor bytes follow it.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    ok = {_JSON: {"schema": _ref("V2InferResponse")}, _BINARY: binary}
    served_by = {
        VERSION_HEADER: {
            "description": "The version that served the answer (as model_version).",
            "schema": {"type": "integer"},
        }
    }
    ok_response = {"description": "The outputs asked for", "content": ok, "headers": served_by}
    return {
        "post": {
            "summary": "Classify images given as a tensor (encoded BYTES or FP32 pixels)",
            "operationId": op,
            "tags": ["Open Inference Protocol"],
            "parameters": [*params, header, *CLIENT_KEY_PARAMS],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": _ref("V2InferRequest")}, _BINARY: binary},
            },
            "responses": {
                "200": ok_response,
                **_errors("400", "401", "404", "413", "415", "422", "429", "502", "503", "504"),
            },
        }
    }


def v2_paths() -> dict[str, Any]:
    live = {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}
    ready = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
    model_ready = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    one = {"parameters": [_MODEL]}
    pinned = {"parameters": [_MODEL, _VERSION]}
    codes = ("400", "401", "404", "502", "503", "504")
    ready_codes = ("400", "401", "404", "502", "504")
    return {
        "/v2/health/live": _get("v2Live", "The process is up", live),
        "/v2/health/ready": _ready("v2Ready", "Every configured model is AVAILABLE", ready),
        "/v2": _get("v2Server", "Server name, version, extensions", _ref("V2Server"), "401"),
        "/v2/models/{model}": _get(
            "v2Model", "The latest version's inputs and outputs", _ref("V2Model"), *codes, **one
        ),
        "/v2/models/{model}/versions/{version}": _get(
            "v2ModelVersion", "A version's inputs and outputs", _ref("V2Model"), *codes, **pinned
        ),
        "/v2/models/{model}/ready": _ready(
            "v2ModelReady", "An AVAILABLE version", model_ready, *ready_codes, **one
        ),
        "/v2/models/{model}/versions/{version}/ready": _ready(
            "v2ModelVersionReady", "The version is AVAILABLE", model_ready, *ready_codes, **pinned
        ),
        "/v2/models/{model}/infer": _infer("v2Infer", [_MODEL]),
        "/v2/models/{model}/versions/{version}/infer": _infer("v2InferVersion", [_MODEL, _VERSION]),
    }


def v2_schemas() -> dict[str, Any]:
    params = {"type": "object", "additionalProperties": True}
    shape = {"type": "array", "items": {"type": "integer", "minimum": -1}}
    meta_properties = {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": shape}
    tensor_meta = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": meta_properties,
    }
    request_input = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": list(DATATYPE_SIZES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": params,
            "data": {"type": "array", "items": {}},
        },
    }
    request_output = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": params},
    }
    response_output = {
        **tensor_meta,
        "properties": {**meta_properties, "data": {}, "parameters": params},
    }
    return {
        "V2Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "V2Server": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2Model": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": tensor_meta},
                "outputs": {"type": "array", "items": tensor_meta},
            },
        },
        "V2InferRequest": {
            "type": "object",
            "description": "Each key once per object, at any depth (else 400 naming the key).",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": params,
                "inputs": {"type": "array", "minItems": 1, "items": request_input},
                "outputs": {"type": "array", "items": request_output},
            },
        },
        "V2InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": params,
                "outputs": {"type": "array", "items": response_output},
            },
        },
    }
