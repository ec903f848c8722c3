"""The pure parts: markers, label and removal rules, config text. The manifest's schema (parsing,
policy selection) is tested in tests/modelrepo/test_manifest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrepo.manifest import ModelManifest, VersionPolicy
from modelrepo.modelconfig import ServedModel, read_previous, render
from sync.errors import VersionError
from sync.marker import build_marker, parse_marker
from sync.planner import ModelInputs, plan_model
from tests.sync.helpers import make_version


def test_marker_round_trip_and_unsafe_paths(tmp_path: Path) -> None:
    folder = make_version(tmp_path, "m", 3)
    marker = build_marker("m", 3, folder)
    assert parse_marker(marker.to_json(), "m", 3).same_content(marker)
    assert {"variables", "assets"} <= set(marker.directories)
    evil = marker.to_json().replace('"saved_model.pb"', '"../../etc/passwd"')
    with pytest.raises(VersionError, match="unsafe path"):
        parse_marker(evil, "m", 3)
    with pytest.raises(VersionError, match="another version"):
        parse_marker(marker.to_json(), "m", 4)


def inputs(**overrides: object) -> ModelInputs:
    base: dict[str, object] = {
        "name": "m",
        "base_path": Path("/models/m"),
        "complete": {1, 2},
        "manifest": ModelManifest(VersionPolicy("all"), {"stable": 2}),
        "installed": {1, 2},
        "failed": set(),
        "previous": ServedModel("m", Path("/models/m"), (1,), {"stable": 1}),
        "states": {1: "AVAILABLE"},
    }
    base.update(overrides)
    return ModelInputs(**base)  # type: ignore[arg-type]


def test_label_stays_until_new_target_is_available() -> None:
    plan = plan_model(inputs(), labels_for_unavailable=False)
    assert plan.served.versions == (1, 2)
    assert plan.served.labels == {"stable": 1}
    assert plan.pending_labels == {"stable": 2}
    plan = plan_model(inputs(states={1: "AVAILABLE", 2: "AVAILABLE"}), False)
    assert plan.served.labels == {"stable": 2}


def test_labels_at_boot_need_the_server_flag() -> None:
    fresh = inputs(previous=None, states=None)
    assert plan_model(fresh, labels_for_unavailable=False).served.labels == {}
    # With --allow_version_labels_for_unavailable_models a new label may go first...
    assert plan_model(fresh, labels_for_unavailable=True).served.labels == {"stable": 2}
    # ...but moving an existing label still waits for the target to load (TF Serving's rule).
    moving = inputs(states={1: "AVAILABLE"})
    assert plan_model(moving, labels_for_unavailable=True).served.labels == {"stable": 1}


def test_label_to_a_version_the_policy_does_not_serve_is_ignored() -> None:
    manifest = ModelManifest(VersionPolicy("latest", 1), {"stable": 1})
    plan = plan_model(inputs(manifest=manifest, states={1: "AVAILABLE", 2: "AVAILABLE"}), False)
    assert plan.served.versions == (2,)
    assert plan.served.labels == {}
    assert any("not served" in note for note in plan.notes)


def test_removal_waits_for_the_server_to_let_go() -> None:
    manifest = ModelManifest(VersionPolicy("latest", 1))
    plan = plan_model(inputs(manifest=manifest, states={1: "AVAILABLE", 2: "AVAILABLE"}), False)
    assert plan.waiting_removal == {1}
    assert not plan.deletable
    assert plan_model(inputs(manifest=manifest, states=None), False).deletable == set()
    plan = plan_model(inputs(manifest=manifest, states={1: "END", 2: "AVAILABLE"}), False)
    assert plan.deletable == {1}


def test_empty_or_unreadable_listing_freezes_the_model() -> None:
    for frozen in (inputs(complete=set()), inputs(manifest=None)):
        plan = plan_model(frozen, False)
        assert plan.served.versions == (1,)
        assert not plan.deletable
        assert not plan.waiting_removal


def test_a_dropped_model_serves_nothing_and_leaves_once_released() -> None:
    dropped = inputs(complete=set(), states={1: "AVAILABLE"}, dropped=True)
    plan = plan_model(dropped, False)
    assert (plan.served.versions, plan.served.labels) == ((), {})
    assert (plan.waiting_removal, plan.deletable) == ({1}, {2})
    released = plan_model(inputs(complete=set(), states={}, dropped=True), False)
    assert released.deletable == {1, 2}


def test_config_text_round_trips_and_tf_serving_parses_it() -> None:
    models = [
        ServedModel("b", Path("/models/b"), (3,)),
        ServedModel("a", Path('/models/"a"'), (1, 2), {"stable": 1, "canary": 2}),
        ServedModel("empty", Path("/models/empty"), ()),
    ]
    text = render(models)
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    configs = {c.name: c for c in parsed.model_config_list.config}
    assert set(configs) == {"a", "b"}
    assert list(configs["a"].model_version_policy.specific.versions) == [1, 2]
    assert dict(configs["a"].version_labels) == {"stable": 1, "canary": 2}
    assert configs["a"].base_path == '/models/"a"'
    assert configs["b"].model_platform == "tensorflow"


def test_previous_config_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    models = [
        ServedModel("a", Path("/m/a"), (1, 2), {"stable": 1}),
        ServedModel("b", Path('/m/"b"\\'), (7,)),
    ]
    path.write_text(render(models))
    previous = read_previous(path)
    assert previous["a"].versions == (1, 2)
    assert dict(previous["a"].labels) == {"stable": 1}
    assert previous["b"].versions == (7,)
    assert previous["b"].base_path == Path('/m/"b"\\')  # unescaped as TF Serving reads it
    assert read_previous(tmp_path / "missing") == {}
    path.write_text("model_config_list { config { name: ")  # cut short: nothing is served
    assert read_previous(path) == {}


def test_label_move_keeps_the_old_version_served_until_the_swap() -> None:
    # latest 1 moves on to version 2 and the label follows: TF Serving's two-step swap.
    manifest = ModelManifest(VersionPolicy("latest", 1), {"stable": 2})
    plan = plan_model(inputs(manifest=manifest), labels_for_unavailable=False)
    assert plan.served.versions == (1, 2)
    assert plan.served.labels == {"stable": 1}
    assert not plan.waiting_removal
    loaded = inputs(manifest=manifest, states={1: "AVAILABLE", 2: "AVAILABLE"})
    plan = plan_model(loaded, labels_for_unavailable=False)
    assert plan.served.versions == (2,)
    assert plan.served.labels == {"stable": 2}
    assert plan.waiting_removal == {1}
