"""The manifest's schema (modelrepo.manifest): what parses, what each policy serves, what a bad
manifest says, and weights rendered back as they were read. How sync and `make labels` use it:
tests/sync."""

from __future__ import annotations

import json

import pytest

from modelrepo.manifest import ManifestError, parse_manifest
from modelrepo.rollouts import ModelRollout


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"latest": {}}, {5}),
        ({"latest": {"num_versions": 2}}, {4, 5}),
        ({"all": {}}, {1, 4, 5}),
        ({"specific": {"versions": [1, "4", 9]}}, {1, 4}),
    ],
)
def test_policies_select_like_tf_serving(policy: dict, expected: set[int]) -> None:
    manifest = parse_manifest(f'{{"model_version_policy": {_json(policy)}}}', "m")
    assert manifest.policy.select({1, 4, 5}) == expected


def _json(value: object) -> str:
    return json.dumps(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "JSON object"),
        ("{", "not JSON"),
        ('{"model_version_policy": {"latest": {"num_versions": 0}}}', "positive"),
        ('{"model_version_policy": {"specific": {"versions": []}}}', "non-empty"),
        ('{"model_version_policy": {"all": {}, "latest": {}}}', "one of"),
        ('{"version_labels": {"stable": -1}}', "positive version"),
        ('{"version_labels": {"bad label": 1}}', "bad label"),
        ('{"labels": {}}', "unknown keys"),
    ],
)
def test_bad_manifests_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text, "m")


def test_the_manifest_carries_weights_and_renders_them_back() -> None:
    text = json.dumps(
        {
            "model_version_policy": {"all": {}},
            "version_labels": {"stable": 1},
            "version_weights": {"1": 90, "2": 10},
            "label_weights": {"stable": {"1": 100, "2": 0}},
        }
    )
    manifest = parse_manifest(text, "cats")
    assert manifest.rollout == ModelRollout({1: 90, 2: 10}, {"stable": {1: 100, 2: 0}})
    assert parse_manifest(manifest.render(), "cats") == manifest
    assert "weights 1=90 2=10; stable: 1=100 2=0" in manifest.describe()
    # Without weights, the manifest renders as before (no new keys).
    plain = parse_manifest('{"version_labels": {"stable": 1}}', "cats")
    assert "weights" not in plain.render()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"version_weights": {"1": 90, "2": 20}}, "cats: version_weights: the weights add up"),
        ({"version_weights": {"1": -1, "2": 101}}, "must be an integer from 0 to 100, got -1"),
        ({"version_weights": [1, 2]}, "must map versions to weights"),
        ({"label_weights": {"stable": {"1": 100}}}, "'stable', which version_labels lacks"),
        (
            {"version_labels": {"9x": 1}, "label_weights": {"9x": {"1": 100}}},
            "bad label name '9x'",
        ),
        ({"weights": {"1": 100}}, "unknown keys ['weights']"),
    ],
)
def test_bad_weights_make_a_bad_manifest(body: dict[str, object], says: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(body), "cats")
    assert says in str(info.value)
