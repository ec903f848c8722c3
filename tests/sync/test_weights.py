"""Weights in the manifest: `make labels WEIGHTS=...`, and sync handing them to the gateway in
rollouts.json (keeping the previous weights when new ones cannot be applied). Parsing them is
the schema's: tests/modelrepo/test_manifest.py."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from devtools.fakeserver import FakeRestStatusServer
from modelrepo import MANIFEST_NAME
from modelrepo.rollouts import ModelRollout, read_rollouts
from sync import labels
from sync.errors import ManifestError
from sync.labels import parse_weight_assignments
from sync.local import LocalSource
from sync.settings import Settings
from sync.syncer import Syncer
from tests.sync.helpers import make_version


def test_weights_on_the_command_line() -> None:
    assert parse_weight_assignments("1=90 2=10") == {1: 90, 2: 10}
    assert parse_weight_assignments("1=90,2=10") == {1: 90, 2: 10}
    assert parse_weight_assignments("1=100 2=0") == {1: 100, 2: 0}
    assert parse_weight_assignments("none") is None
    bad_ones = {
        "1=90 2=5": "add up to 95",
        "1:90": "write VERSION=WEIGHT",
        "1=90 1=10": "given twice",
        "1=-5 2=105": "write VERSION=WEIGHT",
    }
    for bad, says in bad_ones.items():
        with pytest.raises(ManifestError, match=says):
            parse_weight_assignments(bad)


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    for version in (1, 2):
        make_version(root, "cats", version)
    return root


def manifest_of(exports: Path) -> dict[str, object]:
    body: dict[str, object] = json.loads((exports / "cats" / MANIFEST_NAME).read_text())
    return body


def make_labels(exports: Path, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    """`make labels NAME=cats ...` without a bucket: the export folder's manifest."""
    monkeypatch.setenv("DYNOSERVE_EXPORT_DIR", str(exports))
    return labels.main(["--name", "cats", *argv])


def test_make_labels_sets_checks_and_removes_weights(
    exports: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The default policy (latest 1) serves only version 2: a weight on 1 would be ignored.
    assert make_labels(exports, monkeypatch, "--weights", "1=90 2=10") == 65
    assert "version_weights: version 1 is not served by the policy (latest 1" in caplog.text
    assert make_labels(exports, monkeypatch, "--weights", "1=90 3=10", "--policy", "all") == 65
    assert "version_weights: version 3 is not published" in caplog.text
    assert make_labels(exports, monkeypatch, "--weights", "1=90 2=20", "--policy", "all") == 64
    assert not (exports / "cats" / MANIFEST_NAME).exists()

    assert make_labels(exports, monkeypatch, "--weights", "1=90 2=10", "--policy", "all") == 0
    assert manifest_of(exports)["version_weights"] == {"1": 90, "2": 10}
    # A label's weights need the label.
    to_stable = ("--weights", "1=0 2=100", "--weights-label", "stable")
    assert make_labels(exports, monkeypatch, *to_stable) == 65
    assert "weights for label 'stable', which is not set" in caplog.text
    assert make_labels(exports, monkeypatch, "stable=1", *to_stable) == 0
    written = manifest_of(exports)
    assert written["label_weights"] == {"stable": {"1": 0, "2": 100}}
    assert written["version_weights"] == {"1": 90, "2": 10}  # untouched
    assert make_labels(exports, monkeypatch, "--weights", "none") == 0
    assert "version_weights" not in manifest_of(exports)
    assert make_labels(exports, monkeypatch, "stable=") == 0  # removing a label drops its weights
    assert "label_weights" not in manifest_of(exports)


def test_make_labels_on_a_manifest_that_does_not_parse_exits_78_and_says_why(
    exports: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The schema's own error (modelrepo.manifest) is sync's at the store: exit 78, same words.
    bad = '{"version_weights": {"1": 50, "2": 51}}'
    (exports / "cats" / MANIFEST_NAME).write_text(bad)
    assert make_labels(exports, monkeypatch, "stable=2") == 78
    assert "(exit 78): cats: version_weights: the weights add up to 101" in caplog.text
    assert make_labels(exports, monkeypatch) == 78  # showing it too
    assert (exports / "cats" / MANIFEST_NAME).read_text() == bad  # nothing written


def sync_pass(tmp_path: Path, exports: Path) -> Syncer:
    status = FakeRestStatusServer()
    status.states = {"cats": {1: "AVAILABLE", 2: "AVAILABLE"}}
    env = {
        "DYNOSERVE_EXPORT_DIR": str(exports),
        "DYNOSERVE_MODEL_BASE_PATH": str(tmp_path / "models"),
        "DYNOSERVE_MODEL_SERVER_REST_URL": status.url,
    }
    with status:
        settings = Settings.from_env(env)
        syncer = Syncer(settings, LocalSource(settings.export_dir))
        syncer.run_pass()
    return syncer


def write_manifest(exports: Path, body: Mapping[str, object]) -> None:
    (exports / "cats" / MANIFEST_NAME).write_text(json.dumps(body))


def test_sync_hands_the_weights_to_the_gateway_and_keeps_them_through_a_bad_manifest(
    tmp_path: Path, exports: Path
) -> None:
    rollouts = tmp_path / "models" / "rollouts.json"
    policy: dict[str, object] = {"model_version_policy": {"all": {}}}
    write_manifest(exports, {**policy, "version_weights": {"1": 90, "2": 10}})
    syncer = sync_pass(tmp_path, exports)
    assert read_rollouts(rollouts) == {"cats": ModelRollout({1: 90, 2: 10})}
    assert syncer.settings.rollouts_file == rollouts
    status = json.loads(syncer.settings.status_file.read_text())
    assert status["models"]["cats"]["weights"] == {"default": {"1": 90, "2": 10}}

    # A manifest that does not parse at all: reported, nothing served changes, weights stay.
    write_manifest(exports, {**policy, "version_weights": {"1": 50, "2": 51}})
    syncer = sync_pass(tmp_path, exports)
    assert read_rollouts(rollouts) == {"cats": ModelRollout({1: 90, 2: 10})}
    status = json.loads(syncer.settings.status_file.read_text())
    assert "add up to 101" in status["last_error"]
    assert status["models"]["cats"]["served"] == [1, 2]

    # Weights on a version the policy does not serve: reported, the previous ones stay.
    write_manifest(exports, {"model_version_policy": {"specific": {"versions": [2]}},
                             "version_weights": {"1": 50, "2": 50}})  # fmt: skip
    syncer = sync_pass(tmp_path, exports)
    assert read_rollouts(rollouts) == {"cats": ModelRollout({1: 90, 2: 10})}
    problems = json.loads(syncer.settings.status_file.read_text())["models"]["cats"]["problems"]
    assert any("weights not applied" in p and "version 1 is not served" in p for p in problems)

    write_manifest(exports, {**policy, "version_weights": {"1": 50, "2": 50}})
    sync_pass(tmp_path, exports)
    assert read_rollouts(rollouts) == {"cats": ModelRollout({1: 50, 2: 50})}
    write_manifest(exports, policy)  # weights removed: the file has none for the model
    sync_pass(tmp_path, exports)
    assert read_rollouts(rollouts) == {}
