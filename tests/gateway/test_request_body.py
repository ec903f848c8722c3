"""What a request body may carry besides the image: options honoured or refused, never ignored;
malformed bodies of every kind are a 4xx. Flask's test client, FakePredictor behind it."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

from tests.gateway.conftest import FakePredictor
from tests.imagehost import image_bytes

PNG = image_bytes("PNG")
B64 = base64.b64encode(PNG).decode()
PREDICT = "/v1/models/shapes:predict"


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


def test_json_body_options_are_honoured(client: Any, fake_predictor: FakePredictor) -> None:
    response = client.post(PREDICT, json={"image_b64": B64, "version": 1, "top_k": 1})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["version"], len(body["predictions"])) == (1, 1)
    assert client.post(PREDICT, json={"image_b64": B64, "label": "stable"}).status_code == 200
    assert fake_predictor.calls[-1].label == "stable"
    batch = {"images": [{"image_b64": B64}] * 2, "version": "1", "top_k": 2}
    response = client.post(PREDICT, json=batch)
    assert response.get_json()["version"] == 1
    assert [len(r["predictions"]) for r in response.get_json()["results"]] == [2, 2]


def test_multipart_and_urlencoded_fields_are_honoured(
    client: Any, fake_predictor: FakePredictor
) -> None:
    upload = {"image": (io.BytesIO(PNG), "x.png"), "top_k": "1", "version": "1"}
    response = client.post(PREDICT, data=upload)
    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["version"], len(response.get_json()["predictions"])) == (1, 1)
    form = {"image_url": "https://images.example/x.png", "label": "stable", "top_k": "2"}
    response = client.post(PREDICT, data=form)
    assert response.status_code == 200, response.get_json()
    call = fake_predictor.calls[-1]
    assert (call.images[0].url, call.label, call.top_k) == (form["image_url"], "stable", 2)


def test_query_and_body_must_agree(client: Any, fake_predictor: FakePredictor) -> None:
    same = client.post(PREDICT + "?version=1", json={"image_b64": B64, "version": 1})
    assert same.status_code == 200
    conflict = client.post(PREDICT + "?version=2", json={"image_b64": B64, "version": 1})
    assert (conflict.status_code, error_code(conflict)) == (400, "conflicting_parameter")
    assert "version" in conflict.get_json()["error"]["message"]
    upload = {"image": (io.BytesIO(PNG), "x.png"), "top_k": "1"}
    conflict = client.post(PREDICT + "?top_k=3", data=upload)
    assert (conflict.status_code, error_code(conflict)) == (400, "conflicting_parameter")
    mixed = client.post(PREDICT + "?label=stable", json={"image_b64": B64, "version": 1})
    assert (mixed.status_code, error_code(mixed)) == (400, "invalid_parameter")
    calls = len(fake_predictor.calls)
    assert calls == 1  # only the agreeing request reached the predictor


@pytest.mark.parametrize(
    "options",
    [{"version": True}, {"version": 1.5}, {"top_k": [1]}, {"label": 5}, {"top_k": 0}],
)
def test_option_values_of_the_wrong_type_are_refused(client: Any, options: dict[str, Any]) -> None:
    response = client.post(PREDICT, json={"image_b64": B64, **options})
    assert (response.status_code, error_code(response)) == (400, "invalid_parameter")


def test_legacy_route_takes_the_same_options(client: Any, fake_predictor: FakePredictor) -> None:
    body = {"image_url": "https://a.example/x.png", "model": "shapes", "label": "stable"}
    assert client.post("/predict", json={**body, "top_k": 1}).status_code == 200
    assert (fake_predictor.calls[-1].label, fake_predictor.calls[-1].top_k) == ("stable", 1)
    conflict = client.post("/predict?top_k=2", json={**body, "top_k": 1})
    assert error_code(conflict) == "conflicting_parameter"


def test_openapi_documents_forms_and_body_options(client: Any) -> None:
    post = client.get("/openapi.json").get_json()["paths"]["/v1/models/{model}:predict"]["post"]
    content = post["requestBody"]["content"]
    assert set(content) == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    for media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        assert {"version", "label", "top_k"} <= set(content[media]["schema"]["properties"])


# --- malformed bodies (issue 11, item 9) ------------------------------------------------------

DEEP = 100_000
MALFORMED: list[tuple[str, bytes]] = [
    ("application/json", b"[" * DEEP + b"]" * DEEP),
    ("application/json", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("application/json", b'{"image_b64": "' + b"\xff\xfe" * 10 + b'"}'),
    ("application/json", b'{"image_b64": 1' + b"0" * 100_000 + b"}"),
    ("application/json", b'{"image_b64": NaN, "top_k": Infinity}'),
    ("application/json", b"\x00\x01\x02"),
    ("application/json; charset=utf-16", b'{"image_b64": "x"}'),
    ("multipart/form-data", b"--x\r\n\r\n"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nab"),
    ("multipart/form-data; boundary=x", b"--x\r\n" + b"A" * 70_000),
    ("application/x-www-form-urlencoded", b"image_url=%zz&top_k=%ff%fe"),
    ("application/x-www-form-urlencoded", b"&" * 50_000),
    ("text/plain", b"hello"),
]


@pytest.mark.parametrize("route", [PREDICT, "/predict"])
@pytest.mark.parametrize(("content_type", "body"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies_are_4xx(client: Any, route: str, content_type: str, body: bytes) -> None:
    response = client.post(route, data=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert error_code(response)


# --- /metrics names only the version that served (item 7) -------------------------------------


def test_metrics_do_not_credit_a_version_with_a_failed_request(client: Any) -> None:
    refused = client.post(PREDICT, json={"image_b64": base64.b64encode(b"nope").decode()})
    assert refused.status_code == 415
    assert client.post(PREDICT, json={"image_b64": B64}).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'status="415",version=""} 1.0' in text, text
    assert 'status="415",version="2"' not in text
    assert 'status="200",version="2"} 1.0' in text
