"""Weighted rollouts in the gateway: the client key, the version header, and the resolver
following rollouts.json against the real local model server (shapes versions 1 and 2)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gateway.app import create_app
from gateway.rollouts import CLIENT_KEY_HEADER, VERSION_HEADER
from gateway.settings import Settings
from modelrepo.rollouts import ModelRollout, client_bucket, pick, render_rollouts
from tests.gateway.conftest import FakePredictor, Stack
from tests.imagehost import image_bytes

IMAGE = {"image_b64": base64.b64encode(image_bytes()).decode()}


# --- the route: which key a request carries, and the header -----------------------------------


def test_the_answer_names_its_version_in_a_header(make_client: Callable[..., Any]) -> None:
    client = make_client()
    answer = client.post("/v1/models/shapes:predict?version=1", json=IMAGE)
    assert answer.status_code == 200
    assert answer.headers[VERSION_HEADER] == "1" == str(answer.get_json()["version"])
    assert client.post("/v1/models/shapes:predict", json=IMAGE).headers[VERSION_HEADER] == "2"
    refused = client.post("/v1/models/shapes:predict?version=7", json=IMAGE)
    assert refused.status_code == 404
    assert VERSION_HEADER not in refused.headers  # no version served it


@pytest.mark.parametrize(
    ("query", "headers", "key"),
    [
        ("", {}, None),  # no key: a random draw
        ("?client_key=q", {CLIENT_KEY_HEADER: "h", "X-API-Key": "k"}, "q"),
        ("", {CLIENT_KEY_HEADER: "h", "X-API-Key": "k"}, "h"),
        ("", {"X-API-Key": "k"}, "k"),
        ("", {"Authorization": "Bearer b"}, "b"),
        ("?client_key=", {CLIENT_KEY_HEADER: ""}, None),
    ],
)
def test_the_client_key_query_wins_over_the_header_over_the_api_key(
    make_client: Callable[..., Any],
    fake_predictor: FakePredictor,
    query: str,
    headers: dict[str, str],
    key: str | None,
) -> None:
    answer = make_client().post(f"/v1/models/shapes:predict{query}", json=IMAGE, headers=headers)
    assert answer.status_code == 200
    assert fake_predictor.calls[-1].client_key == key


def test_a_client_key_over_256_characters_is_refused(make_client: Callable[..., Any]) -> None:
    client = make_client()
    answer = client.post(f"/v1/models/shapes:predict?client_key={'x' * 257}", json=IMAGE)
    assert answer.status_code == 400
    assert "client_key must be at most 256 characters" in answer.get_json()["error"]["message"]
    long_header = {CLIENT_KEY_HEADER: "x" * 257}
    assert (
        client.post("/v1/models/shapes:predict", json=IMAGE, headers=long_header).status_code == 400
    )


# --- the resolver against the real model server -----------------------------------------------


@pytest.fixture
def weighted(model_stack: Stack, tmp_path: Path) -> Iterator[Callable[[ModelRollout], Flask]]:
    """An app on the shared model server whose rollouts.json (beside its own copy of
    models.config: stable -> 1, canary -> 2) the test writes."""
    config = tmp_path / "models.config"
    config.write_text(model_stack.config_file.read_text())
    app = create_app(Settings(model_server=model_stack.grpc_target, model_config_file=config))

    def with_weights(rollout: ModelRollout) -> Flask:
        (tmp_path / "rollouts.json").write_text(render_rollouts({"shapes": rollout}))
        return app

    yield with_weights
    app.extensions["dynoserve.predictor"].close()


def served(app: Flask, query: str = "", **headers: str) -> int:
    answer = app.test_client().post(
        f"/v1/models/shapes:predict{query}", json=IMAGE, headers=headers
    )
    assert answer.status_code == 200, answer.get_json()
    version = int(answer.headers[VERSION_HEADER])
    assert version == answer.get_json()["version"]
    return version


def metric_lines(app: Flask, name: str) -> list[str]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_a_client_key_gets_its_buckets_version_and_keeps_it(
    weighted: Callable[[ModelRollout], Flask],
) -> None:
    split = {1: 50, 2: 50}
    app = weighted(ModelRollout(split))
    for i in range(20):
        key = f"client-{i}"
        expected = pick(split, client_bucket("shapes", key))
        assert served(app, f"?client_key={key}") == expected
        assert served(app, **{CLIENT_KEY_HEADER: key}) == expected
    # ?version pins as before, whatever the weights.
    assert served(app, "?version=1&client_key=client-0") == 1
    assert any(
        'draw="key"' in line
        for line in metric_lines(app, "dynoserve_gateway_rollout_assignments_total")
    )
    by_version = metric_lines(app, "dynoserve_gateway_version_predictions_total")
    assert any('version="1"' in line and 'outcome="ok"' in line for line in by_version)
    assert any('version="2"' in line and 'outcome="ok"' in line for line in by_version)
    assert metric_lines(app, "dynoserve_gateway_version_inference_duration_seconds_count")


def test_a_weight_of_0_gets_no_request(weighted: Callable[[ModelRollout], Flask]) -> None:
    app = weighted(ModelRollout({1: 0, 2: 100}, {"stable": {1: 100, 2: 0}}))
    assert Counter(served(app) for _ in range(40)) == {2: 40}  # random draws
    assert {served(app, f"?client_key=k{i}") for i in range(40)} == {2}
    # `stable` names version 1 in models.config and follows its own weights.
    assert {served(app, "?label=stable") for _ in range(20)} == {1}
    assert served(app, "?label=canary") == 2  # a label without weights: as before


def test_the_label_follows_its_weights(weighted: Callable[[ModelRollout], Flask]) -> None:
    app = weighted(ModelRollout(None, {"stable": {1: 0, 2: 100}}))
    assert {served(app, "?label=stable") for _ in range(10)} == {2}  # models.config says 1


def test_a_weighted_version_not_loaded_falls_back_without_failing(
    weighted: Callable[[ModelRollout], Flask],
) -> None:
    # Version 3 is weighted but not on the model server (still loading, failed, unloaded).
    app = weighted(ModelRollout({1: 50, 3: 50}))
    assert {served(app, f"?client_key=k{i}") for i in range(30)} == {1}
    assert {served(app) for _ in range(10)} == {1}
    fallbacks = metric_lines(app, "dynoserve_gateway_rollout_fallbacks_total")
    assert any('wanted="3"' in line and 'served="1"' in line for line in fallbacks), fallbacks
    # None of the weighted versions here: answered as without weights (latest; the label's).
    app = weighted(ModelRollout({3: 100}, {"canary": {3: 100}}))
    assert {served(app) for _ in range(5)} == {2}
    assert served(app, "?label=canary") == 2
    fallbacks = metric_lines(app, "dynoserve_gateway_rollout_fallbacks_total")
    assert any('served="unweighted"' in line for line in fallbacks), fallbacks


def test_weights_apply_as_soon_as_the_file_changes(
    weighted: Callable[[ModelRollout], Flask], tmp_path: Path
) -> None:
    app = weighted(ModelRollout({1: 100, 2: 0}))
    assert served(app, "?client_key=a") == 1
    weighted(ModelRollout({1: 0, 2: 100}))
    assert served(app, "?client_key=a") == 2
    # A damaged file keeps the weights read before.
    (tmp_path / "rollouts.json").write_text(json.dumps({"format": 1, "models": {"shapes": 7}}))
    assert served(app, "?client_key=a") == 2
    (tmp_path / "rollouts.json").unlink()  # no file: no weights, the latest
    assert served(app, "?client_key=a") == 2
