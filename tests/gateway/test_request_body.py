"""What a request body may carry besides the image: options honoured or refused, never ignored;
malformed bodies of every kind are a 4xx. Flask's test client, FakePredictor behind it."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

from gateway.bodies import parse_json
from gateway.errors import RepeatedParameter
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


# --- a JSON key given twice (issue 19, item 5) ----------------------------------------------
# json.loads keeps the last of a repeated key and drops the others silently; the gateway refuses
# the body instead, as it refuses a repeated query parameter or form field.

TOP = "the JSON body"
REPEATED_KEYS = [
    (PREDICT, b'{"image_url": "http://a", "top_k": 1, "top_k": 5}', "top_k", TOP),
    (PREDICT, b'{"image_url": "http://a", "label": "stable", "label": "stable"}', "label", TOP),
    (
        PREDICT,
        b'{"images": [{"image_b64": "eA=="}, {"image_url": "http://a", "image_url": "http://b"}]}',
        "image_url",
        "images[1] of the JSON body",
    ),
    ("/predict", b'{"model": "shapes", "image_url": "http://a", "model": "other"}', "model", TOP),
    # the query agrees with both: still two values in one object
    ("/predict?top_k=2", b'{"model": "m", "image_url": "u", "top_k": 2, "top_k": 2}', "top_k", TOP),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "body", "key", "where"), REPEATED_KEYS, ids=range(len(REPEATED_KEYS))
)
def test_a_repeated_json_key_is_refused_not_answered_by_the_last(
    client: Any, fake_predictor: FakePredictor, route: str, body: bytes, key: str, where: str
) -> None:
    response = client.post(route, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "code": "repeated_parameter",
        "message": f'repeated key "{key}" in {where}; give it once',
    }
    assert not fake_predictor.calls


def test_the_same_key_in_different_objects_is_not_a_repeat(
    client: Any, fake_predictor: FakePredictor
) -> None:
    body = b'{"images": [{"image_url": "http://a"}, {"image_url": "http://b"}], "top_k": 1}'
    response = client.post(PREDICT, data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()
    assert [i.url for i in fake_predictor.calls[-1].images] == ["http://a", "http://b"]


def test_a_repeat_in_a_body_that_is_not_json_is_malformed_json(client: Any) -> None:
    body = b'{"image_url": "http://a", "image_url": "http://b", "images": [{"x": 1, "x": 2}'
    response = client.post(PREDICT, data=body, content_type="application/json")
    assert (response.status_code, error_code(response)) == (400, "malformed_json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[{"a": 1, "a": 1}]]', 'repeated key "a" in [0][0] of the JSON body; give it once'),
        (
            '{"a b": {"x": {"k": 1}, "y": {"k": 1, "k": 2}}}',
            'repeated key "k" in ["a b"].y of the JSON body; give it once',
        ),
        # an outer object's repeat is named before one inside it
        ('{"a": {"k": 1, "k": 2}, "a": 3}', 'repeated key "a" in the JSON body; give it once'),
        (
            '{"' + "k" * 100 + '": 1, "' + "k" * 100 + '": 2}',
            'repeated key "' + "k" * 64 + '"... in the JSON body; give it once',
        ),
        (
            "[" * 500 + '{"k": 1, "k": 2}' + "]" * 500,
            'repeated key "k" in ...' + "[0]" * 66 + " of the JSON body; give it once",
        ),
    ],
    ids=["in arrays", "in objects", "outer first", "long key", "deep"],
)
def test_a_repeated_key_is_named_with_its_place(text: str, message: str) -> None:
    with pytest.raises(RepeatedParameter) as caught:
        parse_json(bytearray(text.encode()))
    assert caught.value.message == message


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
