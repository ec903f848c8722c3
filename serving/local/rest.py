"""TF Serving's HTTP/REST API over the data plane: /v1/models/... and the Prometheus page.

Paths, regexes, error bodies (`{"error": message}`) and status codes follow TF Serving's
http_rest_api_handler.cc / http_rest_api_util.cc / http_server.cc.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from grpc import StatusCode
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from serving.local import json_codec
from serving.local.dataplane import SIGNATURE_DEF_FIELD, DataPlane
from serving.local.errors import Internal, InvalidArgument, ServingError

log = logging.getLogger("serving.rest")

_HANDLED = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class RestApi:
    """Routes one HTTP request to the data plane; returns (status, JSON-able body)."""

    def __init__(self, plane: DataPlane, timeout_ms: int, metrics_path: str | None) -> None:
        self.plane = plane
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.metrics_path = metrics_path

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            return HTTPStatus.OK, self._dispatch(method, path, body)
        except ServingError as exc:
            return exc.http_status, {"error": exc.message}
        except Exception as exc:  # every request gets an answer, whatever went wrong
            log.exception("%s %s failed", method, path)
            error = Internal(f"{type(exc).__name__}: {exc}")
            return error.http_status, {"error": error.message}

    def _dispatch(self, method: str, path: str, body: bytes) -> Any:
        malformed = InvalidArgument(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if match is None:
                raise malformed
            name, version, label, verb = match.groups()
            spec = _model_spec(name, version, label)
            if verb.lower() != "predict":
                raise ServingError(
                    f"{verb} is not supported by this server", StatusCode.UNIMPLEMENTED
                )
            return self._predict(spec, body)
        match = _STATUS.fullmatch(path) if method == "GET" else None
        if match is None:
            raise malformed
        name, version, label, subresource = match.groups()
        if not name:
            raise InvalidArgument("Missing model name in request.")
        spec = _model_spec(name, version, label)
        if subresource:
            return self._metadata(spec)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(spec)
        return json_codec.status_json(self.plane.model_status(request))

    def _predict(self, spec: Any, body: bytes) -> Any:
        document = json_codec.parse_body(body)
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(spec)
        request.model_spec.signature_name = json_codec.signature_name_of(document)
        signature = request.model_spec.signature_name or "serving_default"
        with self.plane.manager.serving(request.model_spec) as loaded:
            signatures = loaded.servable.signature_defs
            if signature not in signatures:
                raise InvalidArgument(
                    f'Serving signature name: "{signature}" not found in signature def'
                )
            infos = signatures[signature].inputs
        style = json_codec.fill_predict_request(document, infos, request)
        response = self.plane.predict(request, self.timeout, "REST")
        return json_codec.render_predict(response, style)

    def _metadata(self, spec: Any) -> Any:
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.CopyFrom(spec)
        request.metadata_field.append(SIGNATURE_DEF_FIELD)
        return json_codec.metadata_json(self.plane.model_metadata(request))


def _model_spec(name: str, version: str | None, label: str | None) -> Any:
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = unquote(name)
    if version and label:
        raise InvalidArgument(
            f"Both model version ({version}) and model version label ({label}) cannot be supplied."
        )
    if version:
        spec.version.value = int(version)
    if label:
        spec.version_label = unquote(label)
    return spec


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections close after this, so shutdown can join every handler thread.
    timeout = 5

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        path = urlsplit(self.path).path
        length = self._content_length()
        if length is None:
            self.close_connection = True
            self._reply(HTTPStatus.BAD_REQUEST, b"", "text/html")
            return
        body = self.rfile.read(length) if length else b""
        api = self.server.api
        if api.metrics_path is not None and path == api.metrics_path:
            self._reply(HTTPStatus.OK, self.server.render_metrics(), "text/plain")
            return
        if not _HANDLED.fullmatch(path):
            self._reply(HTTPStatus.NOT_FOUND, b"", "text/html")
            return
        status, document = api.handle(method, path, body)
        payload = json.dumps(document, indent=4).encode() + b"\n"
        self._reply(status, payload, "application/json")

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length") or "0"
        return int(raw) if raw.isdigit() else None

    def _reply(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _HttpServer(ThreadingHTTPServer):
    # A deep accept backlog: the default of 5 stalled siege -c 10 for seconds (ARCHITECTURE.md).
    request_queue_size = 256
    daemon_threads = False  # server_close() waits for in-flight requests
    block_on_close = True
    api: RestApi
    render_metrics: Any


class RestServer:
    """The HTTP listener on its own thread."""

    def __init__(self, host: str, port: int, api: RestApi, render_metrics: Any) -> None:
        self._server = _HttpServer((host, port), _Handler)
        self._server.api = api
        self._server.render_metrics = render_metrics
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
