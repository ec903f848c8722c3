"""HTTP routes: parse the request, call the predictor, render JSON. No work happens here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.datastructures import FileStorage, MultiDict

from gateway.answercache import CACHE_HEADER
from gateway.bodies import decode_b64, parse_json, read_body
from gateway.errors import (
    BadRequest,
    GatewayError,
    InvalidParameter,
    PayloadTooLarge,
    RepeatedParameter,
)
from gateway.errors import UnsupportedMediaType as UnsupportedContent
from gateway.interface import (
    ImageInput,
    ItemResult,
    ModelInfo,
    Predictor,
    PredictRequest,
    PredictResult,
)
from gateway.openapi import openapi_spec
from gateway.rollouts import CLIENT_KEY_PARAM, client_key
from gateway.settings import Settings
from gateway.syncstatus import not_ready_reason, sync_summary
from modelrepo.api import (
    LABEL_RULE,
    MAX_TOP_K,
    MAX_VERSION,
    MODEL_NAME_RULE,
    SELECTOR_FIELDS,
    is_label,
    is_model_name,
    parse_number,
)

bp = Blueprint("gateway", __name__)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["dynoserve.settings"]
    return settings


def _predictor() -> Predictor:
    predictor: Predictor = current_app.extensions["dynoserve.predictor"]
    return predictor


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int, dict[str, str]] | Response:
    readiness = _predictor().readiness()
    sync = sync_summary(_settings().sync_status_file)
    if readiness.ready:
        return jsonify(ready=True, models=readiness.models, sync=sync)
    reason = not_ready_reason(readiness.models, sync)
    body = jsonify(ready=False, reason=reason, models=readiness.models, sync=sync)
    return body, 503, {"Retry-After": str(_settings().retry_after_s)}


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_spec(_settings()))


@bp.get("/")
def demo_page() -> Response:
    page = Path(current_app.static_folder or "", "index.html").read_bytes()
    return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})


@bp.get("/v1/models")
def list_models() -> Response:
    models = _predictor().list_models(g.request_id)
    return jsonify(models=[render_model(m) for m in models])


@bp.get("/v1/models/<model>")
def describe_model(model: str) -> Response:
    return jsonify(render_model(_predictor().describe(check_model_name(model), g.request_id)))


@bp.post("/v1/models/<model>:predict")
def predict(model: str) -> Response:
    refuse_repeats(request.args)
    images, batch = parse_images(_settings())
    params = merge_selector(request.args, _body_fields())
    return run_prediction(check_model_name(model), images, batch, params)


@bp.get("/v1/models/<model>:predict")
def predict_get(model: str) -> Response:
    refuse_repeats(request.args)
    url = request.args.get("image_url")
    if not url:
        raise BadRequest("query parameter image_url is required", code="missing_image")
    params = merge_selector(request.args, {})
    return run_prediction(check_model_name(model), (ImageInput(url=url),), False, params)


@bp.post("/predict")
def predict_legacy() -> Response:
    """The original blog's endpoint: `image_url` and `model` as form fields or JSON."""
    refuse_repeats(request.args)
    fields = _json_object() if request.is_json else _form()
    model, url = fields.get("model"), fields.get("image_url")
    if not isinstance(model, str) or not model:
        raise BadRequest("field model is required", code="missing_model")
    if not isinstance(url, str) or not url:
        raise BadRequest("field image_url is required", code="missing_image")
    params = merge_selector(request.args, fields)
    return run_prediction(check_model_name(model), (ImageInput(url=url),), False, params)


def run_prediction(
    model: str, images: tuple[ImageInput, ...], batch: bool, params: Mapping[str, str]
) -> Response:
    version, label, k = parse_selector(params, _settings().default_top_k)
    g.model = model
    req = PredictRequest(
        model, images, version, label, k, g.request_id, g.get("client", ""), g.get("deadline"),
        client_key=client_key(request.args, request.headers),
    )  # fmt: skip
    result = _predictor().predict(req)
    # Metrics name a version only if it served something: a refused image was served by none.
    if any(item.predictions is not None for item in result.items):
        g.served_version = result.version
    if not batch and result.items[0].error is not None:
        raise result.items[0].error
    response = jsonify(render_result(result, batch))
    if result.cache:
        response.headers[CACHE_HEADER] = result.cache
    return response


def check_model_name(model: str) -> str:
    if not is_model_name(model):
        raise InvalidParameter(f"model names are {MODEL_NAME_RULE}")
    return model


def _body_fields() -> Mapping[str, Any]:
    """The body's top-level fields (JSON object or form), where options may also be given."""
    if request.is_json:
        return _json_object()
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _form()
    return {}


def _form() -> MultiDict[str, str]:
    """The form's fields (and files); one the API reads given twice is a 400."""
    refuse_repeats(request.form, "form field")
    refuse_repeats(request.files, "form field")
    return request.form


# The query parameters and form fields the API reads (others are ignored, repeated or not).
READ_FIELDS = frozenset({*SELECTOR_FIELDS, "image_url", "image", "model", CLIENT_KEY_PARAM})


def refuse_repeats(fields: MultiDict[str, Any], kind: str = "query parameter") -> None:
    """A field the API reads given twice (`?version=1&version=2`) is refused (400
    repeated_parameter): a MultiDict's get() would answer the first and drop the rest
    silently."""
    for name, values in fields.lists():
        if len(values) > 1 and name in READ_FIELDS:
            given = ", ".join(repr(v) if isinstance(v, str) else "a file" for v in values)
            raise RepeatedParameter(
                f"{kind} {name} is given {len(values)} times ({given}); give it once"
            )


def merge_selector(query: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, str]:
    """version, label and top_k from the query string or the body. Given in both places they
    must agree: a request whose query says one version and body another is refused (400),
    never answered from one of them silently."""
    merged: dict[str, str] = {}
    for name in SELECTOR_FIELDS:
        in_query = _option_text(name, query[name]) if name in query else None
        in_body = _option_text(name, body[name]) if name in body else None
        if in_query is not None and in_body is not None and in_query != in_body:
            raise InvalidParameter(
                f"{name} is {in_query!r} in the query string but {in_body!r} in the body; "
                "give it once",
                code="conflicting_parameter",
            )
        value = in_query if in_query is not None else in_body
        if value is not None:
            merged[name] = value
    return merged


def _option_text(name: str, raw: Any) -> str | None:
    """An option as text: strings as given, JSON integers for version/top_k; else a 400 (an
    empty one or a JSON null too: `?label=` would otherwise be answered by the latest
    version)."""
    if raw == "":
        raise InvalidParameter(f"{name} is empty: give a value, or leave {name} out")
    if isinstance(raw, str):
        return raw
    if name != "label" and isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    kind = "a string" if name == "label" else "an integer"
    got = "null" if raw is None else type(raw).__name__
    raise InvalidParameter(f"{name} must be {kind}, got {got}")


def parse_selector(params: Mapping[str, str], default_k: int) -> tuple[int | None, str | None, int]:
    """version / label / top_k, validated (the rules of modelrepo.api), from merge_selector's
    answer."""
    version_raw, label = params.get("version"), params.get("label")
    if version_raw is not None and label is not None:
        raise InvalidParameter("give either version or label, not both")
    version = _number("version", version_raw, upper=MAX_VERSION)
    if label is not None and not is_label(label):
        raise InvalidParameter(f"label must be {LABEL_RULE}")
    k = _number("top_k", params.get("top_k"), upper=MAX_TOP_K)
    return version, label, k or default_k


def _number(name: str, text: str | None, upper: int) -> int | None:
    if text is None:
        return None
    value = parse_number(text, upper)
    if value is None:
        raise InvalidParameter(f"{name} must be an integer from 1 to {upper}")
    return value


def parse_images(settings: Settings) -> tuple[tuple[ImageInput, ...], bool]:
    """Images from a JSON body (image_url, image_b64 or images[]) or a multipart upload."""
    if request.is_json:
        body = _json_object()
        if "images" in body:
            return _parse_batch(body["images"], settings), True
        return (_parse_item(body, settings),), False
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return (_parse_form(settings),), False
    raise UnsupportedContent(
        "send application/json or multipart/form-data", code="unsupported_media_type"
    )


def _json_object() -> dict[str, Any]:
    """The JSON body, read and parsed once per request (bodies.py: few copies at a time); the
    image strings are taken out of it as they are decoded (_take_b64)."""
    body = g.get("json_body")
    if body is None:
        raw = read_body(request.stream, request.content_length, _settings().max_request_bytes)
        body = parse_json(raw)
        del raw  # emptied by parse_json; the name goes too
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", code="malformed_json")
        g.json_body = body
    return body


def _parse_batch(items: Any, settings: Settings) -> tuple[ImageInput, ...]:
    if not isinstance(items, list) or not items:
        raise BadRequest("images must be a non-empty list", code="invalid_batch")
    if len(items) > settings.max_batch:
        raise BadRequest(f"at most {settings.max_batch} images per request", code="batch_too_large")
    return tuple(_parse_item(item, settings) for item in items)


def _parse_item(item: Any, settings: Settings) -> ImageInput:
    if not isinstance(item, dict):
        raise BadRequest("each image must be an object", code="invalid_batch")
    present = [k for k in ("image_url", "image_b64") if k in item]
    if len(present) != 1:
        raise BadRequest("give exactly one of image_url or image_b64", code="missing_image")
    if not isinstance(item[present[0]], str):
        raise BadRequest(f"{present[0]} must be a string", code="missing_image")
    if present[0] == "image_url":
        return ImageInput(url=item["image_url"])
    return ImageInput(data=decode_b64(_take_b64(item), settings.max_image_bytes))


def _take_b64(item: dict[str, Any]) -> str:
    """The item's base64 text, removed from the parsed body: once decoded nothing holds it (a
    6 MB string otherwise lives as long as the request)."""
    text: str = item.pop("image_b64")
    return text


def _parse_form(settings: Settings) -> ImageInput:
    form = _form()
    upload: FileStorage | None = request.files.get("image")
    if upload is not None:
        data = upload.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise PayloadTooLarge(f"image is larger than {settings.max_image_bytes} bytes")
        return ImageInput(data=data)
    url = form.get("image_url")
    if url:
        return ImageInput(url=url)
    raise BadRequest("form field image (a file) or image_url is required", code="missing_image")


def render_result(result: PredictResult, batch: bool) -> dict[str, Any]:
    timings = {
        "fetch": round(result.fetch_ms, 2),
        "inference": round(result.inference_ms, 2),
        "total": round(result.total_ms, 2),
    }
    head: dict[str, Any] = {"model": result.model, "version": result.version}
    if not batch:
        return {**head, "predictions": _scores(result.items[0]), "timings_ms": timings}
    return {**head, "results": [_item(i) for i in result.items], "timings_ms": timings}


def _item(item: ItemResult) -> dict[str, Any]:
    if item.error is not None:
        return render_error(item.error) | {"status": item.error.status}
    return {"predictions": _scores(item)}


def _scores(item: ItemResult) -> list[dict[str, Any]]:
    return [
        {"label": s.label, "class_id": s.class_id, "score": round(s.score, 6)}
        for s in item.predictions or []
    ]


def render_error(error: GatewayError) -> dict[str, Any]:
    return error.to_json()


def render_model(info: ModelInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": info.name,
        "versions": [
            {"version": v.version, "state": v.state, **({"error": v.error} if v.error else {})}
            for v in info.versions
        ],
        "labels": info.labels,
    }
    if info.label_moves:
        body["label_moves"] = {
            label: {"serving": move.serving, "target": move.target}
            for label, move in sorted(info.label_moves.items())
        }
    if info.signature is not None:
        body["signature"] = info.signature
        body["signature_version"] = info.signature_version
        body["num_classes"] = info.num_classes
    return body
