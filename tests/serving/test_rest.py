"""REST conformance: TF Serving's paths, JSON shapes, error bodies and HTTP codes, plain HTTP."""

from __future__ import annotations

import base64

import pytest

from tests.serving.helpers import GREEN, RED, Server, jpeg

pytestmark = pytest.mark.slow

AVAILABLE_OK = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def _b64(image: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(image).decode()}


def test_status_json_matches_tf_serving_exactly(shared_server: Server) -> None:
    status, body = shared_server.rest("GET", "/v1/models/other")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", **AVAILABLE_OK}]}
    status, body = shared_server.rest("GET", "/v1/models/tiny/versions/1")
    assert body == {"model_version_status": [{"version": "1", **AVAILABLE_OK}]}
    # GetModelStatus ignores labels: a label path lists every version, as in TF Serving.
    status, body = shared_server.rest("GET", "/v1/models/tiny/labels/stable")
    assert [v["version"] for v in body["model_version_status"]] == ["2", "1"]


def test_status_errors(shared_server: Server) -> None:
    assert shared_server.rest("GET", "/v1/models/nope") == (
        404,
        {"error": "Could not find any versions of model nope"},
    )
    assert shared_server.rest("GET", "/v1/models") == (
        400,
        {"error": "Missing model name in request."},
    )
    assert shared_server.rest("GET", "/v1/models/tiny/versions/1/labels/x")[0] == 400
    assert shared_server.rest("GET", "/elsewhere")[0] == 404


def test_metadata(shared_server: Server) -> None:
    status, body = shared_server.rest("GET", "/v1/models/tiny/labels/canary/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "tiny", "signature_name": "", "version": "2"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["images"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize("keyed", [False, True])
def test_predict_row_format(shared_server: Server, keyed: bool) -> None:
    images = [_b64(jpeg(RED)), _b64(jpeg(GREEN))]
    body = {"instances": [{"images": i} for i in images] if keyed else images}
    status, answer = shared_server.rest("POST", "/v1/models/tiny/versions/1:predict", body)
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == 2
    assert set(rows[0]) == {"classes", "decoded", "probabilities"}
    assert [row["decoded"] for row in rows] == [True, True]
    best = [r["classes"][r["probabilities"].index(max(r["probabilities"]))] for r in rows]
    assert best == ["cat", "dog"]


def test_predict_columnar_format_and_pixels(shared_server: Server) -> None:
    pixels = [[[[255.0, 0.0, 0.0]] * 32] * 32]
    body = {"signature_name": "predict_pixels", "inputs": {"pixels": pixels}}
    status, answer = shared_server.rest("POST", "/v1/models/tiny/labels/stable:predict", body)
    assert status == 200, answer
    assert set(answer["outputs"]) == {"classes", "probabilities"}
    assert len(answer["outputs"]["probabilities"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "code", "message"),
    [
        (
            "/v1/models/nope:predict",
            {"instances": []},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "/v1/models/tiny/labels/gold:predict",
            {"instances": []},
            400,
            "Unrecognized servable version label: gold",
        ),
        (
            "/v1/models/tiny:predict",
            {"signature_name": 100},
            400,
            "'signature_name' key must be a string value.",
        ),
        ("/v1/models/tiny:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
        ("/v1/models/tiny:predict", b"{not json", 400, None),
        ("/v1/models/tiny:predict", {"instances": [{"b64": "@@"}]}, 400, None),
        (
            "/v1/models/tiny:frobnicate",
            {"instances": []},
            400,
            "Malformed request: POST /v1/models/tiny:frobnicate",
        ),
        (
            "/v1/models/tiny:predict",
            {"signature_name": "nope", "instances": []},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (  # validated before the graph runs: oneDNN's convolution aborts on this rank
            "/v1/models/tiny:predict",
            {"signature_name": "predict_pixels", "instances": [[[0.0, 0.0, 0.0]] * 5]},
            400,
            "input tensor shape does not match signature: pixels has shape [1,5,3] "
            "but the signature expects [?,32,32,3]",
        ),
        (
            "/v1/models/tiny:predict",
            {"signature_name": "predict_pixels", "inputs": [[[["1.5"] * 3] * 32] * 32]},
            400,
            None,
        ),
        ("/v1/models/tiny:predict", b"[" * 100_000, 400, "JSON Parse error: nesting too deep"),
    ],
)
def test_predict_errors(
    shared_server: Server, path: str, body: object, code: int, message: str | None
) -> None:
    status, answer = shared_server.rest("POST", path, body)
    assert status == code
    assert set(answer) == {"error"}
    if message is not None:
        assert answer["error"] == message


def test_prometheus_metrics_at_configured_path(shared_server: Server) -> None:
    shared_server.rest("POST", "/v1/models/other:predict", {"instances": [_b64(jpeg(RED))]})
    status, page = shared_server.rest("GET", "/monitoring/prometheus/metrics")
    assert status == 200
    assert ':tensorflow:serving:request_count_total{model_name="other",status="OK"}' in page
