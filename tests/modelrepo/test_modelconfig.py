"""models.config (modelrepo.modelconfig): the one writer and the one parser against TF Serving's
own message, field for field and text for text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from modelrepo.modelconfig import (
    ModelServerConfig,
    ServedModel,
    read_model_config,
    read_previous,
    render,
)


def _fields(descriptor: object) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in descriptor.fields}  # type: ignore[attr-defined]


def test_message_is_a_subset_of_tf_servings() -> None:
    ours, official = (
        ModelServerConfig.DESCRIPTOR,
        model_server_config_pb2.ModelServerConfig.DESCRIPTOR,
    )
    model = official.fields_by_name["model_config_list"].message_type.fields_by_name["config"]
    our_model = ours.fields_by_name["model_config_list"].message_type.fields_by_name["config"]
    assert _fields(ours).items() <= _fields(official).items()
    assert _fields(our_model.message_type).items() <= _fields(model.message_type).items()
    policy = model.message_type.fields_by_name["model_version_policy"].message_type
    our_policy = our_model.message_type.fields_by_name["model_version_policy"].message_type
    assert _fields(our_policy).items() <= _fields(policy).items()
    assert our_policy.full_name == policy.full_name


def test_models_config_text_parses_the_same() -> None:
    text = """
    model_config_list {
      config {
        name: "shapes"
        base_path: "/models/shapes"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
      config { name: "newest" model_version_policy { latest { num_versions: 2 } } }
      config { name: "every" model_version_policy { all {} } }
    }
    """
    official = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    ours = read_model_config(text)
    assert dict(ours.model_config_list.config[0].version_labels) == {"stable": 1, "canary": 2}
    assert list(ours.model_config_list.config[0].model_version_policy.specific.versions) == [1, 2]
    reparsed = model_server_config_pb2.ModelServerConfig.FromString(ours.SerializeToString())
    assert reparsed == official


def test_unknown_fields_are_skipped_and_bad_text_lists_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = 'model_config_list { config { name: "m" model_type: TENSORFLOW logging_config { } } }'
    assert [c.name for c in read_model_config(text).model_config_list.config] == ["m"]
    with caplog.at_level(logging.WARNING):
        assert not read_model_config("model_config_list { config {").model_config_list.config
    assert "models.config does not parse" in caplog.text


def test_what_sync_writes_reads_back(tmp_path: Path) -> None:
    models = [
        ServedModel("b", tmp_path / "b", (3,), {}),
        ServedModel("a", tmp_path / 'a "q"', (2, 1), {"stable": 1, "canary": 2}),
        ServedModel("empty", tmp_path / "empty", ()),
    ]
    path = tmp_path / "models.config"
    path.write_text(render(models))
    official = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    assert [c.name for c in official.model_config_list.config] == ["a", "b"]
    back = read_previous(path)
    assert back == {
        "a": ServedModel("a", tmp_path / 'a "q"', (1, 2), {"stable": 1, "canary": 2}),
        "b": ServedModel("b", tmp_path / "b", (3,), {}),
    }
    assert read_previous(tmp_path / "missing.config") == {}
