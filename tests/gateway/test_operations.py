"""Operations through Flask's test client: API keys, request ids and logs, security headers,
load shedding, metrics, the OpenAPI document and the demo page. FakePredictor stands in for the
model server."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from typing import Any

import pytest

from gateway.errors import Overloaded
from tests.gateway.conftest import FakePredictor
from tests.imagehost import image_bytes
from tests.support import wait_for

PNG = image_bytes("PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


# --- API keys ---------------------------------------------------------------------------------


def test_api_keys(make_client: Any) -> None:
    client = make_client(api_keys=("s3cret", "other"))
    body = {"json": {"image_b64": b64(PNG)}}
    missing = client.post("/v1/models/shapes:predict", **body)
    assert (missing.status_code, error_code(missing)) == (401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.post("/v1/models/shapes:predict", headers={"X-API-Key": "nope"}, **body)
    assert wrong.status_code == 401
    bearer = {"Authorization": "Bearer other"}
    assert client.post("/v1/models/shapes:predict", headers=bearer, **body).status_code == 200
    header = {"X-API-Key": "s3cret"}
    assert client.get("/v1/models", headers=header).status_code == 200
    assert client.get("/metrics").status_code == 401
    for public in ("/healthz", "/readyz", "/openapi.json", "/"):
        assert client.get(public).status_code == 200, public


# --- request ids, logs, headers ---------------------------------------------------------------


def test_request_id_is_echoed_or_made(client: Any) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers[
        "X-Request-ID"
    ]
    assert len(made) == 32
    assert made.isalnum()


def test_access_log_carries_request_id(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.logs import JsonFormatter

    with caplog.at_level(logging.INFO, logger="gateway.access"):
        client.get("/healthz", headers={"X-Request-ID": "trace-me"})
    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert line["request_id"] == "trace-me"
    assert line["status"] == 200
    assert line["route"] == "/healthz"


def test_security_headers(client: Any) -> None:
    headers = client.get("/").headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in headers["Content-Security-Policy"]


# --- shedding and metrics ---------------------------------------------------------------------


def test_sheds_beyond_max_in_flight(make_client: Any, fake_predictor: FakePredictor) -> None:
    fake_predictor.gate = threading.Event()
    client = make_client(max_in_flight=1, max_queue=0)  # no room to wait: refused at once
    first: list[Any] = []
    worker = threading.Thread(
        target=lambda: first.append(
            client.post("/v1/models/shapes:predict", json={"image_b64": b64(PNG)})
        )
    )
    worker.start()
    try:
        wait_for(lambda: len(fake_predictor.calls) == 1, timeout=5, interval=0.01)
        shed = client.post("/v1/models/shapes:predict", json={"image_b64": b64(PNG)})
        assert (shed.status_code, error_code(shed)) == (503, Overloaded.code)
        assert shed.headers["Retry-After"] == "1"
        assert client.get("/healthz").status_code == 200  # probes are never shed
    finally:
        fake_predictor.gate.set()
        worker.join(10)
    assert first[0].status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "dynoserve_gateway_shed_requests_total 1.0" in metrics
    assert "dynoserve_gateway_in_flight_requests 0.0" in metrics


def test_metrics_count_requests_with_bounded_labels(client: Any) -> None:
    client.post("/v1/models/shapes:predict", json={"image_b64": b64(PNG)})
    client.post("/v1/models/whatever123:predict", json={"image_b64": b64(PNG)})
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'dynoserve_gateway_requests_total{model="shapes",route="/v1/models/<model>:predict",'
        'status="200",version="2"} 1.0'
    ) in text
    assert 'model="other"' in text
    assert "whatever123" not in text
    assert "dynoserve_gateway_request_duration_seconds_bucket" in text


def test_sync_status_in_metrics(make_client: Any, tmp_path: Any) -> None:
    status = tmp_path / "sync-status.json"
    client = make_client(sync_status_file=status)
    assert "dynoserve_sync_" not in client.get("/metrics").get_data(as_text=True)
    # Read through the status file's typed record (modelrepo.syncstatus): its numbers only.
    body = {"last_success_unix": 1700000000, "passes_total": 3, "ok": 1, "state": "x"}
    status.write_text(json.dumps(body))
    text = client.get("/metrics").get_data(as_text=True)
    assert "dynoserve_sync_last_success_unix 1.7e+09" in text
    assert "dynoserve_sync_passes_total 3.0" in text
    assert "dynoserve_sync_ok" not in text


def test_openapi_is_valid_and_lists_every_route(client: Any) -> None:
    from openapi_spec_validator import validate

    spec = client.get("/openapi.json").get_json()
    validate(spec)
    app_rules = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule)
        for r in client.application.url_map.iter_rules()
        if r.endpoint != "static"
    }
    assert app_rules == set(spec["paths"])


def test_demo_page_served(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert b"Drop an image here" in page.data
    script = client.get("/static/demo.js")
    assert script.status_code == 200
    script.close()


def test_openapi_names_the_refusal_and_deadline_codes(client: Any) -> None:
    from gateway.errors import DEADLINE_STAGES, DeadlineExceeded, FetchCapacity, TooManyRequests

    spec = client.get("/openapi.json").get_json()
    responses = spec["paths"]["/v1/models/{model}:predict"]["post"]["responses"]
    assert TooManyRequests.code in responses["429"]["description"]
    assert FetchCapacity.code in responses["503"]["description"]
    assert DeadlineExceeded.code in responses["504"]["description"]
    stage = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["stage"]
    assert stage["enum"] == list(DEADLINE_STAGES)
