"""The /v2 routes of the Open Inference Protocol: parse, call the data plane, render. Errors
here are the protocol's `{"error": "<message>"}` with the gateway's status and headers."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway.bodies import read_body
from gateway.errors import GatewayError, UnsupportedMediaType
from gateway.interface import Predictor
from gateway.membudget import PREDICT_COPIES, body_cost, charge_more
from gateway.rollouts import client_key
from gateway.routes import check_model_name, refuse_repeats
from gateway.settings import Settings
from gateway.v2.codec import HEADER_LENGTH, parse_request, render_response
from gateway.v2.dataplane import Caller, DataPlane

bp = Blueprint("v2", __name__, url_prefix="/v2")

# A /v2 inference body at its peak: the body, then the tensors cut from it and their copies on
# the way to the model server (the body is emptied as the tensors are cut).
BODY_FACTOR = 1.0 + PREDICT_COPIES
# Endpoints a probe calls: public like /healthz and /readyz (app.PUBLIC_ENDPOINTS).
PROBES = {"v2.server_live", "v2.server_ready"}


def _settings() -> Settings:
    settings: Settings = current_app.extensions["dynoserve.settings"]
    return settings


def _plane() -> DataPlane:
    predictor: Predictor = current_app.extensions["dynoserve.predictor"]
    return DataPlane(predictor, _settings())


def _caller() -> Caller:
    refuse_repeats(request.args)
    key = client_key(request.args, request.headers)
    return Caller(g.request_id, g.get("client", ""), g.get("deadline"), key)


@bp.get("/health/live")
def server_live() -> Response:
    return jsonify(live=True)


@bp.get("/health/ready")
def server_ready() -> tuple[Response, int, dict[str, str]]:
    ready = _plane().server_ready()
    headers = {} if ready else {"Retry-After": str(_settings().retry_after_s)}
    return jsonify(ready=ready), 200 if ready else 503, headers


@bp.get("")
def server_metadata() -> Response:
    return jsonify(_plane().server_metadata())


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    g.model = check_model_name(model)
    return jsonify(_plane().model_metadata(model, version, _caller()))


@bp.get("/models/<model>/ready")
@bp.get("/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> tuple[Response, int]:
    g.model = check_model_name(model)
    ready = _plane().model_ready(model, version, _caller())
    return jsonify(name=model, ready=ready), 200 if ready else 503


@bp.post("/models/<model>/infer")
@bp.post("/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    g.model = check_model_name(model)
    settings = _settings()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding} is not supported: send the body uncompressed",
            code="unsupported_content_encoding",
        )
    body = read_body(request.stream, request.content_length, settings.max_request_bytes)
    charge_more(int(len(body) * BODY_FACTOR) - body_cost(len(body), request.mimetype))
    parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
    answer = _plane().infer(model, version, parsed, _caller())
    g.served_version = answer.version
    head: dict[str, object] = {"model_name": answer.model, "model_version": str(answer.version)}
    if parsed.id is not None:
        head["id"] = parsed.id
    data, json_length = render_response(head, answer.outputs)
    if json_length is None:
        return Response(data, mimetype="application/json")
    return Response(
        data,
        mimetype="application/octet-stream",
        headers={HEADER_LENGTH: str(json_length)},
    )


@bp.errorhandler(GatewayError)
def protocol_error(error: GatewayError) -> tuple[Response, int, dict[str, str]]:
    """The protocol's error body; Retry-After and WWW-Authenticate as the gateway sends them."""
    headers: dict[str, str] = {}
    retry_after = error.retry_after_header(_settings().retry_after_s)
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dynoserve"'
    return jsonify(error=error.message), error.status, headers


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int, dict[str, str]]:
    return jsonify(error=error.description or error.name), error.code or 500, {}
