"""`models.config`: the ModelServerConfig text-format file the model server polls, with its one
writer (`render`, sync) and its one parser (`read_model_config`, the gateway's catalog and sync
reading its last file back).

The message is the wire- and text-compatible subset of TF Serving's
tensorflow_serving/config/model_server_config.proto that the two readers need (names, base
path, platform, version policy, version labels); fields outside it are skipped when parsing. It
is built here from a descriptor at import, protobuf alone, into a private descriptor pool: no
code generation, and a process that also imports the official `tensorflow_serving` classes
(the tests, the local model server) holds no second `tensorflow.serving.ModelServerConfig` in
protobuf's default pool.

Versions are always written as a `specific` policy: sync has already applied the bucket's
policy, and listing exact versions keeps a folder that waits for deletion from being picked up
again by a `latest` or `all` policy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

log = logging.getLogger(__name__)

_PACKAGE = "tensorflow.serving"
_FieldProto = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: Any, **extra: Any) -> _FieldProto:
    label = extra.pop("label", _FieldProto.LABEL_OPTIONAL)
    return _FieldProto(name=name, number=number, type=kind, label=label, **extra)


def _message(name: str, *fields: _FieldProto, **extra: Any) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields), **extra)


def _descriptor() -> descriptor_pb2.FileDescriptorProto:
    """model_server_config.proto's subset, as protoc would describe it (proto3)."""
    msg, i64, u32, text = (
        _FieldProto.TYPE_MESSAGE,
        _FieldProto.TYPE_INT64,
        _FieldProto.TYPE_UINT32,
        _FieldProto.TYPE_STRING,
    )
    repeated = _FieldProto.LABEL_REPEATED
    policy = f".{_PACKAGE}.FileSystemStoragePathSourceConfig.ServableVersionPolicy"

    def choice(name: str, number: int, kind: str) -> _FieldProto:
        return _field(name, number, msg, type_name=f"{policy}.{kind}", oneof_index=0)

    servable_policy = _message(
        "ServableVersionPolicy",
        choice("latest", 100, "Latest"),
        choice("all", 101, "All"),
        choice("specific", 102, "Specific"),
        nested_type=[
            _message("Latest", _field("num_versions", 1, u32)),
            _message("All"),
            _message("Specific", _field("versions", 1, i64, label=repeated)),
        ],
        oneof_decl=[descriptor_pb2.OneofDescriptorProto(name="policy_choice")],
    )
    labels_entry = _message(
        "VersionLabelsEntry",
        _field("key", 1, text),
        _field("value", 2, i64),
        options=descriptor_pb2.MessageOptions(map_entry=True),
    )
    model_config = _message(
        "ModelConfig",
        _field("name", 1, text),
        _field("base_path", 2, text),
        _field("model_platform", 4, text),
        _field("model_version_policy", 7, msg, type_name=policy),
        _field(
            "version_labels",
            8,
            msg,
            label=repeated,
            type_name=f".{_PACKAGE}.ModelConfig.VersionLabelsEntry",
        ),
        nested_type=[labels_entry],
    )
    return descriptor_pb2.FileDescriptorProto(
        name="dynoserve/modelrepo/model_server_config.proto",
        package=_PACKAGE,
        syntax="proto3",
        message_type=[
            _message("FileSystemStoragePathSourceConfig", nested_type=[servable_policy]),
            model_config,
            _message(
                "ModelConfigList",
                _field("config", 1, msg, label=repeated, type_name=f".{_PACKAGE}.ModelConfig"),
            ),
            _message(
                "ModelServerConfig",
                _field(
                    "model_config_list",
                    1,
                    msg,
                    type_name=f".{_PACKAGE}.ModelConfigList",
                    oneof_index=0,
                ),
                oneof_decl=[descriptor_pb2.OneofDescriptorProto(name="config")],
            ),
        ],
    )


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_descriptor())
ModelServerConfig: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.ModelServerConfig")
)
"""The message class of models.config (tensorflow.serving.ModelServerConfig, the subset)."""


def read_model_config(text: str) -> Any:
    """A models.config text as the ModelServerConfig message the model server reads (the one
    parser of that file in the dyno's Python); empty, with a warning, when the text does not
    parse."""
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config, allow_unknown_field=True)
    except text_format.ParseError as exc:
        log.warning("models.config does not parse (%s); no models listed from it", exc)
        return ModelServerConfig()
    return config


@dataclass(frozen=True)
class ServedModel:
    """One `config { ... }` entry."""

    name: str
    base_path: Path
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)


def render(models: Iterable[ServedModel]) -> str:
    """ModelServerConfig text; models with no version are left out (nothing to serve)."""
    lines = ["# Written by dynoserve sync; edits are overwritten.", "model_config_list {"]
    for model in sorted(models, key=lambda m: m.name):
        if model.versions:
            lines.extend(_render_model(model))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_model(model: ServedModel) -> list[str]:
    lines = [
        "  config {",
        f"    name: {_quote(model.name)}",
        f"    base_path: {_quote(str(model.base_path))}",
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
        "      specific {",
    ]
    lines.extend(f"        versions: {version}" for version in sorted(model.versions))
    lines.extend(["      }", "    }"])
    for label, version in sorted(model.labels.items()):
        lines.append("    version_labels {")
        lines.extend([f"      key: {_quote(label)}", f"      value: {version}", "    }"])
    lines.append("  }")
    return lines


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def read_previous(path: Path) -> dict[str, ServedModel]:
    """What the last models.config we wrote serves; {} when there is none (or it does not parse).

    It stands in for the label map the model server holds, which TF Serving's REST API does not
    expose.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {
        c.name: ServedModel(
            c.name,
            Path(c.base_path),
            tuple(c.model_version_policy.specific.versions),
            dict(c.version_labels),
        )
        for c in read_model_config(text).model_config_list.config
        if c.name
    }
