"""The OpenAPI document and the rules the server enforces agree (modelrepo.api): the document's
patterns and bounds are the rules' own, and whatever the document accepts the server accepts,
and the other way round (property-based, through the real routes with FakePredictor)."""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.openapi import openapi_spec
from gateway.settings import Settings
from modelrepo import LABEL_PATTERN, MODEL_NAME_PATTERN
from modelrepo.api import (
    MAX_TOP_K,
    MAX_VERSION,
    is_label,
    is_model_name,
    label_pattern,
    model_name_pattern,
    number_pattern,
    parse_number,
    version_or_label_pattern,
)
from tests.gateway.conftest import FakePredictor
from tests.imagehost import image_bytes

SPEC = openapi_spec(Settings(max_batch=4))
PREDICT = "/v1/models/{model}:predict"
PNG_B64 = base64.b64encode(image_bytes("PNG")).decode()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its $refs into components followed (for jsonschema)."""
    return {**schema, "components": SPEC["components"]}


def _valid(schema: dict[str, Any], value: Any) -> bool:
    """The document's judgement (jsonschema reads OpenAPI 3.0 schemas as draft 4 ones)."""
    refs = {"$ref": "#/definitions/it", "definitions": {"it": schema}}
    document = _resolve(refs)
    return jsonschema.Draft4Validator(document).is_valid(value)


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (json path, value) in the document."""
    found = [(path, node)]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += _walk(value, f"{path}/{n}")
    return found


def _options_param(method: str) -> dict[str, Any]:
    params = SPEC["paths"][PREDICT][method]["parameters"]
    (options,) = [p for p in params if p["name"] == "options"]
    schema: dict[str, Any] = options["schema"]
    return schema


# --- the document's patterns and bounds are the rules' own ------------------------------------


def test_every_version_label_and_top_k_in_the_document_is_the_rules() -> None:
    """Each version / label / top_k schema (query, JSON, forms, /predict) says the same."""
    seen = {"version": 0, "label": 0, "top_k": 0}
    requests = [(p, n) for p, n in _walk(SPEC["paths"]) if "/responses" not in p]
    for schema in ("ImageRequest", "BatchRequest"):
        requests += _walk(SPEC["components"]["schemas"][schema], schema)
    for path, node in requests:
        name = path.rsplit("/", 1)[-1]
        if name not in seen or not isinstance(node, dict) or "enum" in node:
            continue
        seen[name] += 1
        forms = node.get("anyOf", [node])
        if name == "label":
            assert node["pattern"] == label_pattern(), path
            continue
        upper = MAX_VERSION if name == "version" else MAX_TOP_K
        for form in forms:
            if form["type"] == "integer":
                assert (form["minimum"], form["maximum"]) == (1, upper), path
            else:
                assert form["pattern"] == number_pattern(upper), path
    assert all(count >= 5 for count in seen.values()), seen


def test_every_path_parameter_is_the_rules() -> None:
    """{model} everywhere, and /v2's {version} (a number or a label in its place)."""
    rules = {"model": model_name_pattern(), "version": version_or_label_pattern()}
    count = 0
    for path, node in _walk(SPEC["paths"]):
        if isinstance(node, dict) and node.get("in") == "path":
            assert node["schema"]["pattern"] == rules[node["name"]], path
            count += 1
    assert count >= 10
    legacy = SPEC["paths"]["/predict"]["post"]["requestBody"]["content"]
    for body in legacy.values():
        assert body["schema"]["properties"]["model"]["pattern"] == model_name_pattern()


# The binary tensor extension's header (a length, not an API rule) is the one other pattern.
_HEADER_LENGTH = "^[0-9]{1,12}$"


def test_no_pattern_is_written_by_hand() -> None:
    """Every pattern in the document comes from modelrepo.api."""
    ours = {
        label_pattern(),
        model_name_pattern(),
        number_pattern(MAX_VERSION),
        number_pattern(MAX_TOP_K),
        version_or_label_pattern(),
        _HEADER_LENGTH,
    }
    patterns = [(path, node) for path, node in _walk(SPEC) if path.endswith("/pattern")]
    assert patterns
    for path, node in patterns:
        assert node in ours, path


# --- whatever the pattern accepts the rule accepts, and the other way round -------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=70)


def _near(pattern: re.Pattern[str]) -> st.SearchStrategy[str]:
    """Strings around a rule's edge: matches, matches with a character added or cut."""
    match = st.from_regex(pattern, fullmatch=True)
    return st.one_of(
        match,
        st.tuples(match, _TEXT.filter(bool)).map("".join),
        st.tuples(st.sampled_from(["", "0", "_", "-", ".", "\n", " "]), match).map("".join),
        match.map(lambda s: s[1:]),
        _TEXT,
    )


@FUZZ
@given(_near(LABEL_PATTERN))
def test_label_pattern_is_the_label_rule(text: str) -> None:
    assert (re.search(label_pattern(), text) is not None) == is_label(text)


@FUZZ
@given(_near(MODEL_NAME_PATTERN))
def test_model_name_pattern_is_the_model_name_rule(text: str) -> None:
    assert (re.search(model_name_pattern(), text) is not None) == is_model_name(text)


_NUMBERS = st.one_of(
    st.integers(-3, 2**64).map(str),
    st.integers(MAX_VERSION - 3, MAX_VERSION + 3).map(str),
    st.integers(MAX_TOP_K - 3, MAX_TOP_K + 3).map(str),
    st.tuples(st.sampled_from(["0", "00", "+", " ", "-", "1", "٣"]), st.integers(0, 2**63)).map(
        lambda t: t[0] + str(t[1])
    ),
    _TEXT,
)


@FUZZ
@given(_NUMBERS, st.sampled_from([MAX_VERSION, MAX_TOP_K]))
def test_number_pattern_is_parse_number(text: str, upper: int) -> None:
    assert (re.search(number_pattern(upper), text) is not None) == (
        parse_number(text, upper) is not None
    )


@FUZZ
@given(st.one_of(_NUMBERS, _near(LABEL_PATTERN)))
def test_v2_version_segment_pattern_is_the_server_rule(text: str) -> None:
    accepted = parse_number(text, MAX_VERSION) is not None or is_label(text)
    assert (re.search(version_or_label_pattern(), text) is not None) == accepted


# --- the server accepts what the document accepts --------------------------------------------


@pytest.fixture(scope="module")
def api() -> Any:
    predictor = FakePredictor(labels={"shapes": {}})
    return create_app(Settings(max_batch=4), predictor).test_client()


def _refused_as_invalid(response: Any) -> bool:
    """400 invalid_parameter: the server's word for "not a valid option"."""
    return response.status_code == 400 and response.get_json()["error"]["code"] in (
        "invalid_parameter",
        "repeated_parameter",
    )


def _query(options: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in options.items())


_QUERY_TEXT = st.one_of(_NUMBERS, _near(LABEL_PATTERN), st.just(""))


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["version", "label", "top_k"]), _QUERY_TEXT, max_size=3),
)
def test_query_options_the_document_accepts_are_the_ones_the_server_accepts(
    api: Any, options: dict[str, str]
) -> None:
    """?version= / ?label= / ?top_k= (alone or together) through GET and POST :predict."""
    schema = _options_param("get")
    typed: dict[str, Any] = {
        k: (int(v) if k != "label" and re.fullmatch(r"-?[0-9]+", v) else v)
        for k, v in options.items()
    }
    documented = _valid(schema, typed)
    url = f"/v1/models/shapes:predict?{_query(options)}"
    got = api.get(f"{url}&image_url=http://example.test/a.png")
    assert _refused_as_invalid(got) == (not documented), (options, got.get_json())
    posted = api.post(url, json={"image_b64": PNG_B64})
    assert _refused_as_invalid(posted) == (not documented), (options, posted.get_json())


_JSON_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2**64),
    st.integers(MAX_TOP_K - 2, MAX_TOP_K + 2),
    _QUERY_TEXT,
    st.lists(st.integers(1, 3), max_size=2),
)
_IMAGE_KEYS = st.sets(st.sampled_from(["image_url", "image_b64"]))


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["version", "label", "top_k"]), _JSON_VALUE, max_size=3),
    _IMAGE_KEYS,
)
def test_json_bodies_the_document_accepts_are_the_ones_the_server_accepts(
    api: Any, options: dict[str, Any], images: set[str]
) -> None:
    """A JSON body's options and images: ImageRequest's schema and the server agree."""
    sources = {"image_url": "http://example.test/a.png", "image_b64": PNG_B64}
    body = {**{k: sources[k] for k in images}, **options}
    documented = _valid({"$ref": "#/components/schemas/ImageRequest"}, body)
    got = api.post("/v1/models/shapes:predict", json=body)
    refused = got.status_code == 400
    assert refused == (not documented), (body, got.get_json())


@FUZZ
@given(st.dictionaries(st.sampled_from(["version", "label", "top_k"]), _QUERY_TEXT, max_size=3))
def test_form_fields_the_document_accepts_are_the_ones_the_server_accepts(
    api: Any, options: dict[str, str]
) -> None:
    content = SPEC["paths"][PREDICT]["post"]["requestBody"]["content"]
    schema = content["application/x-www-form-urlencoded"]["schema"]
    form = {"image_url": "http://example.test/a.png", **options}
    documented = _valid(schema, form)
    got = api.post("/v1/models/shapes:predict", data=form)
    assert _refused_as_invalid(got) == (not documented), (form, got.get_json())


@FUZZ
@given(_near(MODEL_NAME_PATTERN).filter(lambda s: "/" not in s and s not in (".", "..")))
def test_legacy_model_field_the_document_accepts_is_the_one_the_server_accepts(
    api: Any, model: str
) -> None:
    schema = SPEC["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    body = {"image_url": "http://example.test/a.png", "model": model}
    documented = _valid(schema["schema"], body)
    got = api.post("/predict", json=body)
    assert (got.status_code == 400) == (not documented), (model, got.get_json())
