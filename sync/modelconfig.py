"""`models.config`: the ModelServerConfig text-format file the model server polls.

Written by hand (no TensorFlow or TF Serving protos in the dyno's Python); the grammar is
protobuf text format for tensorflow.serving.ModelServerConfig, as in TF Serving's
serving_config guide. Versions are always written as a `specific` policy: sync has already
applied the bucket's policy, and listing exact versions keeps a folder that waits for deletion
from being picked up again by a `latest` or `all` policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


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


_CONFIG_BLOCK = re.compile(r'name:\s*"((?:[^"\\]|\\.)*)"(.*?)(?=\n  config \{|\Z)', re.S)
_LABEL = re.compile(r'version_labels\s*\{\s*key:\s*"([^"]*)"\s*value:\s*(\d+)\s*\}')
_VERSION = re.compile(r"versions:\s*(\d+)")


def read_previous(path: Path) -> dict[str, ServedModel]:
    """What the last models.config we wrote serves; {} when there is none.

    Only our own output is parsed (hence the simple patterns): it stands in for the label map
    the model server holds, which TF Serving's REST API does not expose.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    previous: dict[str, ServedModel] = {}
    for match in _CONFIG_BLOCK.finditer(text):
        name, body = match.group(1), match.group(2)
        labels = {key: int(value) for key, value in _LABEL.findall(body)}
        versions = tuple(int(v) for v in _VERSION.findall(body))
        base = re.search(r'base_path:\s*"((?:[^"\\]|\\.)*)"', body)
        base_path = Path(base.group(1)) if base else Path()
        previous[name] = ServedModel(name, base_path, versions, labels)
    return previous
