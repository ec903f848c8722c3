"""The OpenAPI 3.0 description of the gateway's HTTP API, served at /openapi.json.

Kept by hand beside routes.py; tests run schemathesis against it, so a route or a response
shape that drifts from this document fails the build.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.answercache import CACHE_HEADER
from gateway.errors import DEADLINE_STAGES
from gateway.rollouts import CLIENT_KEY_HEADER, CLIENT_KEY_PARAM, VERSION_HEADER
from gateway.settings import Settings
from gateway.v2.openapi import v2_paths, v2_schemas
from modelrepo import MODEL_NAME_PATTERN
from modelrepo.rollouts import MAX_CLIENT_KEY_CHARS

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERRORS = {
    "400": _error("Malformed request, image URL or parameter"),
    "401": _error("Missing or wrong API key (only when keys are configured)"),
    "404": _error("Unknown model, version or label"),
    "413": _error("Image or request body too large"),
    "415": _error("Not an image, unsupported image format, or unsupported request body type"),
    "422": _error("The image could not be decoded"),
    "429": _error(
        "This client (its API key, else its address) holds more than its fair share of a pool "
        "others wait for (client_over_share: request memory, image fetches, the admission "
        "queue); see Retry-After"
    ),
    "502": _error("The image host or the model server failed"),
    "503": _error(
        "Model not ready (model_not_ready), gateway overloaded (overloaded: the queue cannot "
        "answer in time), every image-fetch slot taken (fetch_capacity), or its memory budget "
        "for requests taken (memory_budget); see Retry-After"
    ),
    "504": _error(
        "deadline_exceeded: the request's deadline (DYNOSERVE_REQUEST_TIMEOUT_S) or a gRPC "
        "call's ran out; `stage` names where: " + ", ".join(DEADLINE_STAGES)
    ),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ERRORS[code] for code in codes}


_PREDICT_ERRORS = ("400", "401", "404", "413", "415", "422", "429", "502", "503", "504")
_MODEL_PARAM = {
    "name": "model",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{MODEL_NAME_PATTERN.pattern}$"},
}
_SELECTOR_PARAMS = [
    {
        "name": "version",
        "in": "query",
        "description": "Pin a version number; without version or label the latest is used.",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "label",
        "in": "query",
        "description": "Pin a version label from models.config (e.g. stable, canary).",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$"},
    },
    {
        "name": "top_k",
        "in": "query",
        "description": "How many classes to return, best first.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
    },
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
_SERVED_BY = {
    VERSION_HEADER: {
        "description": "The version that served the answer (as the body's `version`).",
        "schema": {"type": "integer"},
    },
    CACHE_HEADER: {
        "description": "Whether the answer came from the answer cache (docs/answer-cache.md): "
        "`hit` (every image answered did), `miss` (none did), `partial` (a batch of both); "
        "absent when the cache is off (DYNOSERVE_ANSWER_CACHE_BYTES=0) or nothing was answered.",
        "schema": {"type": "string", "enum": ["hit", "miss", "partial"]},
    },
}


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "stage": {
                    "type": "string",
                    "enum": list(DEADLINE_STAGES),
                    "description": "deadline_exceeded only: the stage that ran out of time",
                },
            },
        }
    },
}


def _schemas(settings: Settings) -> dict[str, Any]:
    return {
        "Error": _ERROR_SCHEMA,
        **_request_schemas(settings),
        **_result_schemas(),
        **_model_schemas(),
        **v2_schemas(),
    }


def _body_options(as_text: bool = False) -> dict[str, Any]:
    """version / label / top_k in a body, as in the query string (if both: they must agree)."""
    number = {"type": "string", "pattern": "^[0-9]+$"} if as_text else {"type": "integer"}
    return {
        "version": {**number, "description": "Same as the query parameter."},
        "label": {"type": "string", "description": "Same as the query parameter."},
        "top_k": {**number, "description": "Same as the query parameter."},
    }


def _request_schemas(settings: Settings) -> dict[str, Any]:
    url = {"type": "string", "format": "uri", "maxLength": 2048}
    b64 = {"type": "string", "format": "byte", "description": "Base64 image (data: URL allowed)"}
    options = "version, label and top_k may also be given here; if the query string gives one "
    options += "too, both must agree (else 400 conflicting_parameter)."
    return {
        "Image": {
            "type": "object",
            "description": "Exactly one of image_url or image_b64.",
            "properties": {"image_url": url, "image_b64": b64},
        },
        "ImageRequest": {
            "type": "object",
            "description": "Exactly one of image_url or image_b64. " + options,
            "properties": {"image_url": url, "image_b64": b64, **_body_options()},
        },
        "BatchRequest": {
            "type": "object",
            "required": ["images"],
            "description": options,
            "properties": {
                "images": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_batch,
                    "items": _ref("Image"),
                },
                **_body_options(),
            },
        },
    }


def _result_schemas() -> dict[str, Any]:
    score = {
        "type": "object",
        "required": ["label", "class_id", "score"],
        "properties": {
            "label": {"type": "string"},
            "class_id": {"type": "integer", "minimum": 0},
            "score": {"type": "number"},
        },
    }
    timings = {
        "type": "object",
        "description": "Milliseconds spent fetching images, in the Predict call, and in total.",
        "required": ["fetch", "inference", "total"],
        "properties": {k: {"type": "number"} for k in ("fetch", "inference", "total")},
    }
    head = {"model": {"type": "string"}, "timings_ms": _ref("Timings")}
    return {
        "Score": score,
        "Timings": timings,
        "Prediction": {
            "type": "object",
            "required": ["model", "version", "predictions", "timings_ms"],
            "properties": {
                **head,
                "version": {"type": "integer", "description": "The version that served it"},
                "predictions": {"type": "array", "items": _ref("Score")},
            },
        },
        "BatchPrediction": {
            "type": "object",
            "required": ["model", "version", "results", "timings_ms"],
            "properties": {
                **head,
                "version": {"type": "integer", "nullable": True},
                "results": {"type": "array", "items": _ref("BatchItem")},
            },
        },
        "BatchItem": {
            "type": "object",
            "description": "Per image, in request order: its predictions, or its error.",
            "properties": {
                "predictions": {"type": "array", "items": _ref("Score")},
                "error": _ERROR_SCHEMA["properties"]["error"],  # type: ignore[index]
                "status": {"type": "integer", "description": "HTTP status of this item's error"},
            },
        },
    }


def _model_schemas() -> dict[str, Any]:
    states = "UNKNOWN, START, LOADING, AVAILABLE, UNLOADING or END"
    return {
        "VersionStatus": {
            "type": "object",
            "required": ["version", "state"],
            "properties": {
                "version": {"type": "integer"},
                "state": {"type": "string", "description": states},
                "error": {"type": "string"},
            },
        },
        "LabelMove": {
            "type": "object",
            "required": ["serving", "target"],
            "properties": {
                "serving": {"type": "integer", "nullable": True},
                "target": {"type": "integer"},
            },
        },
        "Model": {
            "type": "object",
            "required": ["name", "versions", "labels"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": _ref("VersionStatus")},
                "labels": {"type": "object", "additionalProperties": {"type": "integer"}},
                "label_moves": {
                    "type": "object",
                    "description": "Labels models.config has moved that the model server has"
                    " not applied yet (present only then): ?label= is answered by `serving`"
                    " (null: not yet) until it is answered by `target`",
                    "additionalProperties": _ref("LabelMove"),
                },
                "signature": {"type": "object", "description": "Inputs and outputs served"},
                "signature_version": {
                    "type": "integer",
                    "description": "The version the signature was read from (the latest)",
                },
                "num_classes": {"type": "integer", "nullable": True},
            },
        },
    }


def _predict_post() -> dict[str, Any]:
    single = {"oneOf": [_ref("ImageRequest"), _ref("BatchRequest")]}
    upload = {"image": {"type": "string", "format": "binary"}, "image_url": {"type": "string"}}
    form = {"type": "object", "properties": {**upload, **_body_options(as_text=True)}}
    urlencoded = {
        "type": "object",
        "required": ["image_url"],
        "properties": {"image_url": {"type": "string"}, **_body_options(as_text=True)},
    }
    return {
        "summary": "Classify an image by URL, base64 or upload, or a batch of them",
        "operationId": "predict",
        "parameters": [_MODEL_PARAM, *_SELECTOR_PARAMS],
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {"schema": single},
                "multipart/form-data": {"schema": form},
                "application/x-www-form-urlencoded": {"schema": urlencoded},
            },
        },
        "responses": {
            "200": _json(
                "Top-k classes (a batch answers one entry per image)",
                {"oneOf": [_ref("Prediction"), _ref("BatchPrediction")]},
            )
            | {"headers": _SERVED_BY},
            **_errors(*_PREDICT_ERRORS),
        },
    }


def _predict_get() -> dict[str, Any]:
    url_param = {
        "name": "image_url",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "maxLength": 2048},
    }
    return {
        "summary": "Classify an image by URL (for curl, browsers and load tools)",
        "operationId": "predictGet",
        "parameters": [_MODEL_PARAM, url_param, *_SELECTOR_PARAMS],
        "responses": {
            "200": _json("Top-k classes", _ref("Prediction")) | {"headers": _SERVED_BY},
            **_errors(*_PREDICT_ERRORS),
        },
    }


def _predict_legacy() -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["image_url", "model"],
        "properties": {
            "image_url": {"type": "string"},
            "model": {"type": "string"},
            **_body_options(),
        },
    }
    return {
        "summary": "The original API: image_url and model as form fields or JSON",
        "operationId": "predictLegacy",
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {"schema": body},
                "application/x-www-form-urlencoded": {"schema": body},
            },
        },
        "responses": {
            "200": _json("Top-k classes", _ref("Prediction")),
            **_errors(*_PREDICT_ERRORS),
        },
    }


def _simple(summary: str, op: str, response: dict[str, Any], *errors: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "operationId": op,
            "responses": {"200": response, **_errors(*errors)},
        }
    }


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The full document; limits in it follow the running settings."""
    spec: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Dynoserve gateway",
            "version": __version__,
            "description": "Image classification over TF Serving. Errors are "
            '`{"error": {"code", "message"}}` with a stable code.',
        },
        "paths": {
            **_operational_paths(),
            **_model_paths(),
            "/v1/models/{model}:predict": {"post": _predict_post(), "get": _predict_get()},
            "/predict": {"post": _predict_legacy()},
            **v2_paths(),
        },
        "components": {"schemas": _schemas(settings), "securitySchemes": _security_schemes()},
    }
    if settings.api_keys:
        spec["security"] = [{"bearer": []}, {"apiKey": []}]
        for path in (
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/",
            "/v2/health/live",
            "/v2/health/ready",
        ):
            spec["paths"][path]["get"]["security"] = []
    return spec


def _operational_paths() -> dict[str, Any]:
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    ready = {
        "type": "object",
        "required": ["ready", "models"],
        "properties": {
            "ready": {"type": "boolean"},
            "models": {"type": "object", "additionalProperties": {"type": "string"}},
            "reason": {"type": "string", "description": "why not ready (503 only)"},
            "sync": {
                "type": "object",
                "nullable": True,
                "description": "sync's boot state and last error (sync-status.json)",
            },
        },
    }
    readyz = {"200": _json("Ready", ready), "503": _json("Not ready", ready)}
    prometheus = {"text/plain": {"schema": {"type": "string"}}}
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/healthz": _simple("The process is up", "healthz", _json("Up", status)),
        "/readyz": {
            "get": {
                "summary": "Every configured model has an AVAILABLE version",
                "operationId": "readyz",
                "responses": readyz,
            }
        },
        "/metrics": _simple(
            "Prometheus metrics",
            "metrics",
            {"description": "Prometheus text format", "content": prometheus},
            "401",
        ),
        "/openapi.json": _simple(
            "This document", "openapi", _json("OpenAPI 3.0", {"type": "object"})
        ),
        "/": _simple("Demo page", "demo", {"description": "HTML page", "content": html}),
    }


def _model_paths() -> dict[str, Any]:
    models = {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": _ref("Model")}},
    }
    return {
        "/v1/models": _simple(
            "Every model with its versions, states and labels",
            "listModels",
            _json("Models", models),
            "401",
            "502",
            "503",
            "504",
        ),
        "/v1/models/{model}": {
            "get": {
                "summary": "One model: versions, labels, input signature, number of classes",
                "operationId": "describeModel",
                "parameters": [_MODEL_PARAM],
                "responses": {
                    "200": _json("Model", _ref("Model")),
                    **_errors("400", "401", "404", "502", "503", "504"),
                },
            }
        },
    }


def _security_schemes() -> dict[str, Any]:
    return {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
