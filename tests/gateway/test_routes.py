"""Routing, request parsing and every error status, via Flask's test client.

The model server is replaced by FakePredictor (see conftest); the real request path is tested
in test_request_path.py.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

from gateway.errors import DeadlineExceeded, ModelNotReady
from tests.gateway.conftest import FakePredictor
from tests.imagehost import image_bytes

PNG = image_bytes("PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


def test_healthz(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_follows_the_predictor(make_client: Any, fake_predictor: FakePredictor) -> None:
    assert make_client().get("/readyz").status_code == 200
    fake_predictor.ready = False
    response = make_client().get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.get_json()
    body.pop("sync")  # whatever a `make run` left in var/models
    assert body == {
        "ready": False,
        "reason": "no AVAILABLE version yet for shapes",
        "models": {"shapes": "LOADING"},
    }


def test_readyz_says_sync_has_not_booted_and_why(
    make_client: Any, fake_predictor: FakePredictor, tmp_path: Any
) -> None:
    status = tmp_path / "sync-status.json"
    status.write_text('{"boot_completed_at": null, "last_error": "cannot reach s3://b/models"}')
    fake_predictor.ready = False
    response = make_client(sync_status_file=status).get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["reason"] == "sync has not completed its boot pass: cannot reach s3://b/models"
    assert body["sync"]["last_error"] == "cannot reach s3://b/models"


def test_predict_b64_single(client: Any, fake_predictor: FakePredictor) -> None:
    response = client.post("/v1/models/shapes:predict?top_k=2", json={"image_b64": b64(PNG)})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"] == "shapes"
    assert body["version"] == 2
    assert body["predictions"] == [
        {"label": "cat", "class_id": 0, "score": 0.7},
        {"label": "dog", "class_id": 1, "score": 0.2},
    ]
    assert set(body["timings_ms"]) == {"fetch", "inference", "total"}
    assert fake_predictor.calls[0].images[0].data == PNG


def test_predict_data_url_b64(client: Any) -> None:
    data_url = "data:image/png;base64," + b64(PNG)
    assert client.post("/v1/models/shapes:predict", json={"image_b64": data_url}).status_code == 200


def test_predict_image_url_is_passed_on(client: Any, fake_predictor: FakePredictor) -> None:
    url = "https://images.example/cat.jpg"
    response = client.post("/v1/models/shapes:predict?version=1", json={"image_url": url})
    assert response.status_code == 200
    request = fake_predictor.calls[0]
    assert (request.images[0].url, request.version, request.label, request.top_k) == (
        url,
        1,
        None,
        5,
    )


def test_predict_label_pin(client: Any, fake_predictor: FakePredictor) -> None:
    response = client.post("/v1/models/shapes:predict?label=stable", json={"image_b64": b64(PNG)})
    assert response.status_code == 200
    assert response.get_json()["version"] == 1
    assert fake_predictor.calls[0].label == "stable"


def test_predict_multipart_upload(client: Any, fake_predictor: FakePredictor) -> None:
    data = {"image": (io.BytesIO(PNG), "x.png", "image/png")}
    response = client.post(
        "/v1/models/shapes:predict", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 200
    assert fake_predictor.calls[0].images[0].data == PNG


def test_predict_get_for_curl(client: Any, fake_predictor: FakePredictor) -> None:
    response = client.get("/v1/models/shapes:predict?image_url=https://a.example/x.png&version=2")
    assert response.status_code == 200
    assert fake_predictor.calls[0].images[0].url == "https://a.example/x.png"
    assert fake_predictor.calls[0].version == 2


def test_batch_has_per_item_errors(client: Any) -> None:
    images = [{"image_b64": b64(PNG)}, {"image_b64": b64(b"not an image")}]
    response = client.post("/v1/models/shapes:predict", json={"images": images})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert results[0]["predictions"][0]["label"] == "cat"
    assert results[1]["error"]["code"] == "unsupported_image_format"
    assert results[1]["status"] == 415


def test_legacy_predict_form_and_json(client: Any, fake_predictor: FakePredictor) -> None:
    form = {"image_url": "https://a.example/x.png", "model": "shapes", "version": "1"}
    assert client.post("/predict", data=form).status_code == 200
    assert fake_predictor.calls[-1].version == 1
    response = client.post(
        "/predict", json={"image_url": "https://a.example/x.png", "model": "shapes"}
    )
    assert response.status_code == 200
    assert response.get_json()["version"] == 2


def test_models_listing_and_detail(client: Any) -> None:
    listing = client.get("/v1/models").get_json()
    assert listing["models"][0]["name"] == "shapes"
    assert listing["models"][0]["labels"] == {"stable": 1}
    detail = client.get("/v1/models/shapes")
    assert detail.status_code == 200
    assert [v["version"] for v in detail.get_json()["versions"]] == [2, 1]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "post",
            "/v1/models/shapes:predict",
            {"data": "{", "content_type": "application/json"},
            400,
            "malformed_json",
        ),
        ("post", "/v1/models/shapes:predict", {"json": []}, 400, "malformed_json"),
        ("post", "/v1/models/shapes:predict", {"json": {}}, 400, "missing_image"),
        (
            "post",
            "/v1/models/shapes:predict",
            {"json": {"image_url": "x", "image_b64": "eA=="}},
            400,
            "missing_image",
        ),
        ("post", "/v1/models/shapes:predict", {"json": {"image_url": 5}}, 400, "missing_image"),
        (
            "post",
            "/v1/models/shapes:predict",
            {"json": {"image_b64": "%%%"}},
            400,
            "invalid_base64",
        ),
        ("post", "/v1/models/shapes:predict", {"json": {"images": []}}, 400, "invalid_batch"),
        ("post", "/v1/models/shapes:predict", {"json": {"images": [1]}}, 400, "invalid_batch"),
        (
            "post",
            "/v1/models/shapes:predict",
            {"json": {"images": [{"image_b64": "eA=="}] * 17}},
            400,
            "batch_too_large",
        ),
        (
            "post",
            "/v1/models/shapes:predict?version=0",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/shapes:predict?version=x",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/shapes:predict?top_k=0",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/shapes:predict?top_k=101",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/shapes:predict?version=1&label=stable",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/shapes:predict?label=a%20b",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/sh%20apes:predict",
            {"json": {"image_b64": "eA=="}},
            400,
            "invalid_parameter",
        ),
        (
            "post",
            "/v1/models/shapes:predict",
            {"data": "x", "content_type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (
            "post",
            "/v1/models/shapes:predict",
            {"data": {}, "content_type": "multipart/form-data"},
            400,
            "missing_image",
        ),
        ("get", "/v1/models/shapes:predict", {}, 400, "missing_image"),
        ("post", "/predict", {"data": {"image_url": "https://a.example/x"}}, 400, "missing_model"),
        ("post", "/predict", {"data": {"model": "shapes"}}, 400, "missing_image"),
        (
            "post",
            "/v1/models/nope:predict",
            {"json": {"image_b64": b64(PNG)}},
            404,
            "model_not_found",
        ),
        (
            "post",
            "/v1/models/shapes:predict?version=9",
            {"json": {"image_b64": b64(PNG)}},
            404,
            "version_not_found",
        ),
        (
            "post",
            "/v1/models/shapes:predict?label=canary",
            {"json": {"image_b64": b64(PNG)}},
            404,
            "label_not_found",
        ),
        ("get", "/v1/models/nope", {}, 404, "model_not_found"),
        ("get", "/nowhere", {}, 404, "not_found"),
        ("delete", "/v1/models/shapes:predict", {}, 405, "method_not_allowed"),
        (
            "post",
            "/v1/models/shapes:predict",
            {"json": {"image_b64": b64(b"GIF89a" + b"\0" * 10)}},
            422,
            "undecodable_image",
        ),
        (
            "post",
            "/v1/models/shapes:predict",
            {"json": {"image_b64": b64(b"hello")}},
            415,
            "unsupported_image_format",
        ),
        (
            "post",
            "/v1/models/shapes:predict",
            {"json": {"image_b64": b64(image_bytes("JPEG"))[:-8]}},
            422,
            "undecodable_image",
        ),
    ],
)
def test_errors(
    client: Any, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert error_code(response) == code
    assert response.get_json()["error"]["message"]


def test_405_names_allowed_methods(client: Any) -> None:
    response = client.put("/v1/models")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]


def test_body_and_image_size_limits(make_client: Any) -> None:
    client = make_client(max_request_bytes=1000, max_image_bytes=500)
    big = client.post("/v1/models/shapes:predict", json={"image_b64": "A" * 2000})
    assert (big.status_code, error_code(big)) == (413, "request_too_large")
    upload = {"image": (io.BytesIO(b"\x89PNG" + b"0" * 600), "x.png")}
    response = client.post("/v1/models/shapes:predict", data=upload)
    assert (response.status_code, error_code(response)) == (413, "image_too_large")
    b64_big = client.post("/v1/models/shapes:predict", json={"image_b64": "A" * 900})
    assert (b64_big.status_code, error_code(b64_big)) == (413, "image_too_large")


def test_pixel_cap_is_checked_from_the_header(client: Any) -> None:
    huge = image_bytes("PNG", size=(8000, 6000))
    response = client.post("/v1/models/shapes:predict", json={"image_b64": b64(huge)})
    assert (response.status_code, error_code(response)) == (413, "image_too_large")


@pytest.mark.parametrize(
    ("error", "status", "retry"),
    [(ModelNotReady("loading"), 503, "1"), (DeadlineExceeded("slow"), 504, None)],
)
def test_backend_errors_render(
    make_client: Any, fake_predictor: FakePredictor, error: Any, status: int, retry: str | None
) -> None:
    fake_predictor.fail_with = error
    response = make_client().post("/v1/models/shapes:predict", json={"image_b64": b64(PNG)})
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry
    assert error_code(response) == error.code


def test_unexpected_exception_is_a_json_500(
    make_client: Any, fake_predictor: FakePredictor
) -> None:
    fake_predictor.fail_with = RuntimeError("boom")  # type: ignore[assignment]
    response = make_client().post("/v1/models/shapes:predict", json={"image_b64": b64(PNG)})
    assert response.status_code == 500
    assert error_code(response) == "internal"
    assert "boom" not in response.get_data(as_text=True)
