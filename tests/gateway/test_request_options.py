"""The new-user findings of issue 19: an option is never silently dropped or misread (empty,
repeated, a label that reads as a number), and the answer names the rule that refused it."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

from modelrepo.api import MAX_TOP_K, MAX_VERSION
from tests.gateway.conftest import FakePredictor
from tests.imagehost import image_bytes

PNG = image_bytes("PNG")
GET = "/v1/models/shapes:predict?image_url=http://example.test/a.png&"


def _error(response: Any) -> tuple[int, str, str]:
    error = response.get_json()["error"]
    return response.status_code, error["code"], error["message"]


@pytest.fixture
def labelled() -> FakePredictor:
    return FakePredictor(labels={"shapes": {"stable": 1, "_x": 2}})


def test_a_label_starting_with_a_digit_is_refused(make_client: Any) -> None:
    status, code, message = _error(make_client().get(GET + "label=1st"))
    assert (status, code) == (400, "invalid_parameter")
    assert "starting with a letter or '_'" in message


def test_a_label_starting_with_an_underscore_is_served(
    make_client: Any, labelled: FakePredictor
) -> None:
    response = make_client(labelled).get(GET + "label=_x")
    assert response.status_code == 200
    assert response.get_json()["version"] == 2


@pytest.mark.parametrize("name", ["label", "version", "top_k"])
def test_an_empty_option_is_refused_not_answered_by_the_latest(
    make_client: Any, fake_predictor: FakePredictor, name: str
) -> None:
    status, code, message = _error(make_client().get(GET + f"{name}="))
    assert (status, code) == (400, "invalid_parameter")
    assert message == f"{name} is empty: give a value, or leave {name} out"
    assert not fake_predictor.calls


@pytest.mark.parametrize(
    ("query", "name"),
    [("version=1&version=2", "version"), ("top_k=&top_k=1", "top_k"), ("label=a&label=a", "label")],
)
def test_a_repeated_query_parameter_is_refused(
    make_client: Any, fake_predictor: FakePredictor, query: str, name: str
) -> None:
    for response in (
        make_client().get(GET + query),
        make_client().post(f"/v1/models/shapes:predict?{query}", json={"image_url": "http://x"}),
    ):
        status, code, message = _error(response)
        assert (status, code) == (400, "repeated_parameter")
        assert message.startswith(f"query parameter {name} is given 2 times")
    assert not fake_predictor.calls


def test_a_repeated_image_url_is_refused(make_client: Any) -> None:
    status, code, _ = _error(make_client().get(GET + "image_url=http://example.test/b.png"))
    assert (status, code) == (400, "repeated_parameter")


def test_repeated_form_fields_and_files_are_refused(make_client: Any) -> None:
    client = make_client()
    fields = client.post("/v1/models/shapes:predict", data={"image_url": ["http://a", "http://b"]})
    assert _error(fields)[:2] == (400, "repeated_parameter")
    files = {"image": [(io.BytesIO(PNG), "a.png"), (io.BytesIO(PNG), "b.png")]}
    uploads = client.post("/v1/models/shapes:predict", data=files)
    status, code, message = _error(uploads)
    assert (status, code) == (400, "repeated_parameter")
    assert message == "form field image is given 2 times (a file, a file); give it once"
    legacy = client.post("/predict", data={"model": ["shapes", "other"], "image_url": "http://a"})
    assert _error(legacy)[:2] == (400, "repeated_parameter")


def test_a_repeated_field_the_api_does_not_read_is_ignored(make_client: Any) -> None:
    assert make_client().get(GET + "utm=1&utm=2").status_code == 200


def test_a_repeated_v2_client_key_is_refused(make_client: Any) -> None:
    response = make_client().get("/v2/models/shapes/versions/1?client_key=a&client_key=b")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "query parameter client_key is given 2 times ('a', 'b'); give it once"
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"label": None}, "label must be a string, got null"),
        ({"version": 0}, f"version must be an integer from 1 to {MAX_VERSION}"),
        ({"top_k": MAX_TOP_K + 1}, f"top_k must be an integer from 1 to {MAX_TOP_K}"),
        ({"version": 1, "label": "stable"}, "give either version or label, not both"),
    ],
)  # fmt: skip
def test_body_options_follow_the_same_rules(make_client: Any, body: Any, message: str) -> None:
    body = {"image_url": "http://a", **body}
    assert _error(make_client().post("/v1/models/shapes:predict", json=body)) == (
        400,
        "invalid_parameter",
        message,
    )


def test_a_null_image_is_refused_not_read_as_absent(make_client: Any) -> None:
    client = make_client()
    both = {"image_url": None, "image_b64": base64.b64encode(PNG).decode()}
    status, code, message = _error(client.post("/v1/models/shapes:predict", json=both))
    assert (status, code, message) == (
        400,
        "missing_image",
        "give exactly one of image_url or image_b64",
    )
    alone = client.post("/v1/models/shapes:predict", json={"image_url": None})
    assert _error(alone) == (400, "missing_image", "image_url must be a string")


def test_the_largest_version_is_a_version(make_client: Any) -> None:
    response = make_client().get(GET + f"version={MAX_VERSION}")
    assert _error(response)[:2] == (404, "version_not_found")
    too_large = make_client().get(GET + f"version={MAX_VERSION + 1}")
    assert _error(too_large)[:2] == (400, "invalid_parameter")
