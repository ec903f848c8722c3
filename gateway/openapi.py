"""The OpenAPI 3.0 description of the gateway's HTTP API, served at /openapi.json.

Kept beside routes.py; its patterns and bounds come from modelrepo/api.py, the rules routes.py
enforces. tests/gateway/test_openapi_rules.py checks that the two agree and
test_openapi_fuzz.py runs schemathesis against it, so a rule, a route or a response shape that
drifts from this document fails the build.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.answercache import CACHE_HEADER
from gateway.errors import DEADLINE_STAGES
from gateway.fetch import MAX_URL_LENGTH
from gateway.rollouts import VERSION_HEADER
from gateway.settings import Settings
from gateway.v2.openapi import CLIENT_KEY_PARAMS, v2_paths, v2_schemas
from modelrepo.api import (
    MAX_TOP_K,
    MAX_VERSION,
    label_pattern,
    model_name_pattern,
    number_pattern,
)

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERRORS = {
    "400": _error(
        "Malformed request, image URL or parameter; a query or form parameter given more than "
        "once, or a key given twice in one JSON object at any depth (repeated_parameter)"
    ),
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
    "schema": {"type": "string", "pattern": model_name_pattern()},
}
# The rules of modelrepo.api; routes.py enforces the same (test_openapi_rules.py checks both).
_VERSION = {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}
_LABEL = {"type": "string", "pattern": label_pattern()}
_TOP_K = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K}
# Rules between fields (not both version and label) in the bodies' schemas.
_NOT_BOTH_PINS = {"not": {"required": ["version", "label"]}}
_ONCE = " Not empty, and given once (else 400 invalid_parameter, repeated_parameter)."
# version, label and top_k as one exploded object parameter (`?version=2&top_k=3`): the one way
# OpenAPI 3.0 can say a rule between query parameters (here: not both version and label).
_SELECTOR_PARAM = {
    "name": "options",
    "in": "query",
    "style": "form",
    "explode": True,
    "description": "Which version answers (a version number or a label, not both; without "
    "either the latest) and how many classes (top_k).",
    "schema": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "version": _VERSION | {"description": "Pin a version number." + _ONCE},
            "label": _LABEL | {"description": "Pin a version label (stable, canary)." + _ONCE},
            "top_k": _TOP_K | {"description": "Classes to return, best first." + _ONCE},
        },
        **_NOT_BOTH_PINS,
    },
}
_SELECTOR_PARAMS = [_SELECTOR_PARAM, *CLIENT_KEY_PARAMS]
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


def _as_text(number: dict[str, Any]) -> dict[str, Any]:
    """A bounded integer as a form field's text (digits; leading zeros allowed)."""
    return {"type": "string", "pattern": number_pattern(number["maximum"])}


def _body_options(as_text: bool = False) -> dict[str, Any]:
    """version / label / top_k in a body, as in the query string (if both: they must agree);
    in JSON a number may also be given as its digits."""
    same = {"description": "Same as the query parameter."}
    if as_text:
        version, top_k = _as_text(_VERSION), _as_text(_TOP_K)
    else:
        version = {"anyOf": [_VERSION, _as_text(_VERSION)]}
        top_k = {"anyOf": [_TOP_K, _as_text(_TOP_K)]}
    return {"version": version | same, "label": _LABEL | same, "top_k": top_k | same}


# JSON Schema cannot say it (a parser keeps one of the values); bodies.parse_json enforces it.
_JSON_KEYS_ONCE = "Each key once per object (else 400 repeated_parameter)."
_ONE_IMAGE = {"oneOf": [{"required": ["image_url"]}, {"required": ["image_b64"]}]}


def _request_schemas(settings: Settings) -> dict[str, Any]:
    url = {"type": "string", "format": "uri", "minLength": 1, "maxLength": MAX_URL_LENGTH}
    b64 = {"type": "string", "format": "byte", "description": "Base64 image (data: URL allowed)"}
    options = "version, label and top_k may also be given here (not both version and label); "
    options += "if the query string gives one too, both must agree (else 400 "
    options += "conflicting_parameter). "
    options += _JSON_KEYS_ONCE
    return {
        "Image": {
            "type": "object",
            "description": "Exactly one of image_url or image_b64. " + _JSON_KEYS_ONCE,
            "properties": {"image_url": url, "image_b64": b64},
            **_ONE_IMAGE,
        },
        "ImageRequest": {
            "type": "object",
            "description": "Exactly one of image_url or image_b64. " + options,
            "properties": {"image_url": url, "image_b64": b64, **_body_options()},
            "allOf": [_ONE_IMAGE, _NOT_BOTH_PINS, {"not": {"required": ["images"]}}],
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
            **_NOT_BOTH_PINS,
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
    url = {"type": "string", "minLength": 1}
    upload = {"image": {"type": "string", "format": "binary"}, "image_url": url}
    # "not both version and label" without `not`: schemathesis 4.32 cannot judge a `not` next
    # to a binary field (ValueError: Unsupported type: 'Binary'). A form field is never null,
    # so `{"enum": [None]}` says "absent".
    absent = {"enum": [None]}
    form = {
        "type": "object",
        "description": "The file image, else image_url; not both version and label.",
        "properties": {**upload, **_body_options(as_text=True)},
        "anyOf": [
            {"required": [image], "properties": {pin: absent}}
            for image in ("image", "image_url")
            for pin in ("version", "label")
        ],
    }
    urlencoded = {
        "type": "object",
        "required": ["image_url"],
        "properties": {"image_url": url, **_body_options(as_text=True)},
        **_NOT_BOTH_PINS,
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
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH},
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
    def body(as_text: bool) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["image_url", "model"],
            "properties": {
                "image_url": {"type": "string", "minLength": 1},
                "model": {"type": "string", "minLength": 1, "pattern": model_name_pattern()},
                **_body_options(as_text),
            },
            **_NOT_BOTH_PINS,
        }

    return {
        "summary": "The original API: image_url and model as form fields or JSON",
        "operationId": "predictLegacy",
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {"schema": body(as_text=False) | {"description": _JSON_KEYS_ONCE}},
                "application/x-www-form-urlencoded": {"schema": body(as_text=True)},
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
