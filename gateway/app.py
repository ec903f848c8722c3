"""The application factory: wires settings, predictor, metrics, auth, admission and errors."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from gateway.admission import AdmissionControl, AdmittedPredictor
from gateway.deadline import Deadline
from gateway.errors import BadRequest as GatewayBadRequest
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, Unauthorized
from gateway.errors import PayloadTooLarge as GatewayPayloadTooLarge
from gateway.fairness import client_identity
from gateway.interface import Predictor
from gateway.logs import request_id_var
from gateway.membudget import MemoryBudget, body_cost, for_request
from gateway.metrics import Metrics
from gateway.predictor import ModelServerPredictor
from gateway.rollouts import VERSION_HEADER, offered_api_key
from gateway.routes import bp
from gateway.settings import Settings
from gateway.v2.routes import PROBES as V2_PROBES
from gateway.v2.routes import bp as v2_bp

log = logging.getLogger("gateway.access")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Probes, the docs and the demo page stay reachable without a key; the page asks for one.
PUBLIC_ENDPOINTS = {
    "gateway.healthz",
    "gateway.readyz",
    "gateway.openapi",
    "gateway.demo_page",
    *V2_PROBES,
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: https: http:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
}


def create_app(
    settings: Settings | None = None,
    predictor: Predictor | None = None,
    metrics: Metrics | None = None,
) -> Flask:
    """Build the gateway app; tests pass their own settings and (fake) predictor."""
    settings = settings or Settings()
    metrics = metrics or Metrics(settings.sync_status_file)
    if predictor is None:
        model_predictor = ModelServerPredictor(settings, metrics=metrics)
        metrics.count_fetch_connections(model_predictor.fetcher.connection_counts)
        predictor = model_predictor
    # Predictions wait their turn here; the rest of the Predictor passes straight through.
    admission = AdmissionControl.from_settings(settings, metrics)
    predictor = AdmittedPredictor(predictor, admission, client_gone=_client_gone)
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["dynoserve.settings"] = settings
    app.extensions["dynoserve.predictor"] = predictor
    app.extensions["dynoserve.metrics"] = metrics
    app.register_blueprint(bp)
    app.register_blueprint(v2_bp)  # the Open Inference Protocol (gateway/v2)
    _install_hooks(app, settings, predictor, metrics)
    _install_memory_budget(app, settings, metrics)
    _install_error_handlers(app, settings)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _install_hooks(app: Flask, settings: Settings, predictor: Predictor, metrics: Metrics) -> None:
    @app.before_request
    def start_request() -> None:
        # The request's one deadline counts from its first byte (gateway/drain.py stamps it:
        # a slow upload and a wait for a worker thread spend from it too); servers that do not
        # stamp (the test client) count from here.
        g.deadline = Deadline.from_environ(request.environ, settings.request_timeout_s)
        g.start = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request_id_var.set(g.request_id)
        if settings.api_keys and request.endpoint not in PUBLIC_ENDPOINTS:
            _authenticate(settings.api_keys)
        g.client = _client(settings)

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if g.get("served_version") is not None:
            response.headers[VERSION_HEADER] = str(g.served_version)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        _record(metrics, predictor, response.status_code)
        return response


def _install_memory_budget(app: Flask, settings: Settings, metrics: Metrics) -> None:
    """Reserve what a request's body will cost (membudget.py) before anything reads it, after
    start_request has named the client; give it back when the request ends, however it ends
    (teardown runs after errors and after a client hung up too)."""
    budget = MemoryBudget(settings.memory_budget_bytes, on_refusal=_count_refusal(metrics))
    app.extensions["dynoserve.memory"] = budget
    metrics.memory_reserved.set_function(lambda: budget.in_use)

    @app.before_request
    def reserve_memory() -> None:
        length = request.content_length
        if length is not None and length > settings.max_request_bytes:
            raise GatewayPayloadTooLarge(
                f"the body is larger than {settings.max_request_bytes} bytes",
                code="request_too_large",
            )
        if length is None and _unsized_body():
            length = settings.max_request_bytes  # read with that cap (bodies.read_body)
        client = g.get("client") or client_identity(None, request.remote_addr)
        cost = body_cost(length or 0, request.mimetype)
        reservation = budget.reserve(client, cost, _memory_wait(settings), _client_gone)
        scope = ExitStack()
        scope.enter_context(for_request(reservation))
        g.memory_scope = scope

    @app.teardown_request
    def release_memory(_error: BaseException | None) -> None:
        scope = g.pop("memory_scope", None)
        if scope is not None:
            scope.close()


def _memory_wait(settings: Settings) -> float:
    """How long this request may wait for memory: the setting, within its deadline."""
    deadline: Deadline | None = g.get("deadline")
    left = settings.memory_wait_s if deadline is None else deadline.remaining()
    return max(0.0, min(settings.memory_wait_s, left))


def _unsized_body() -> bool:
    """A chunked body whose length nobody knows yet: servers that stream it to the app (waitress
    reads a chunked body whole, then sets Content-Length and drops Transfer-Encoding)."""
    return request.headers.get("Transfer-Encoding", "").lower().endswith("chunked")


def _count_refusal(metrics: Metrics) -> Callable[[str], None]:
    return lambda reason: metrics.refused("bytes", reason)


def _client_gone() -> bool:
    """Whether the client of the current request closed its connection. Waitress notices only
    while it reads from the connection during a request: server.py sets
    channel_request_lookahead for that. Other servers (the test client) never say so."""
    check = request.environ.get("waitress.client_disconnected")
    return bool(check is not None and check())


def _offered_key() -> str:
    return offered_api_key(request.headers)


def _client(settings: Settings) -> str:
    """Who the request counts against in fair shares: its API key where keys are checked (an
    unchecked one would be a free new identity per request), else its address (REMOTE_ADDR:
    the last X-Forwarded-For entry with DYNOSERVE_TRUST_X_FORWARDED_FOR, see server.py)."""
    checked = bool(settings.api_keys) and request.endpoint not in PUBLIC_ENDPOINTS
    return client_identity(_offered_key() if checked else None, request.remote_addr)


def _authenticate(keys: tuple[str, ...]) -> None:
    """Accept `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""
    offered = _offered_key()
    if not offered:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    candidate = offered.encode()
    # Compare against every key so the time taken does not reveal which one matched.
    matches = [hmac.compare_digest(candidate, key.encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("the API key is not valid")


def _record(metrics: Metrics, predictor: Predictor, status: int) -> None:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    elapsed = time.perf_counter() - g.get("start", time.perf_counter())
    model = g.get("model", "")
    if model and model not in predictor.known_models():
        model = "other"  # names come from strangers: keep label cardinality bounded
    version = g.get("served_version")
    metrics.requests.labels(route, model, "" if version is None else str(version), status).inc()
    metrics.latency.labels(route).observe(elapsed)
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        status,
        extra={
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "route": route,
            "model": model or None,
            "version": version,
        },
    )


def _install_error_handlers(app: Flask, settings: Settings) -> None:
    @app.errorhandler(GatewayError)
    def gateway_error(error: GatewayError) -> tuple[Response, int, dict[str, str]]:
        headers = {}
        retry_after = error.retry_after_header(settings.retry_after_s)
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="dynoserve"'
        return jsonify(error.to_json()), error.status, headers

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int, dict[str, str]]:
        body, status, headers = gateway_error(_from_werkzeug(error))
        allow = getattr(error, "valid_methods", None)
        if status == 405 and allow:
            headers["Allow"] = ", ".join(sorted(allow))
        return body, status, headers

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int, dict[str, str]]:
        logging.getLogger("gateway").exception("unhandled error")
        return gateway_error(GatewayError("internal error; see the gateway log"))


def _from_werkzeug(error: HTTPException) -> GatewayError:
    """Routing and body-size errors raised by Flask itself, in our error format."""
    message = error.description or error.name
    if error.code == 404:
        return NotFound("no such endpoint")
    if error.code == 405:
        return MethodNotAllowed(f"method {request.method} is not allowed here")
    if error.code == 413:
        return GatewayPayloadTooLarge(message, code="request_too_large")
    if error.code == 400:
        return GatewayBadRequest(message)
    generic = GatewayError(message, code=(error.name or "error").lower().replace(" ", "_"))
    generic.status = error.code or 500
    return generic
