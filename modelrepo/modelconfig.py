"""`models.config`: the ModelServerConfig text-format file the model server polls.

Written as text, in the layout of TF Serving's serving_config guide (protobuf text format for
tensorflow.serving.ModelServerConfig); read back with the gateway's generated message, the one
parser of models.config in the dyno's Python (gateway.catalog). Versions are always written as
a `specific` policy: sync has already applied the bucket's policy, and listing exact versions
keeps a folder that waits for deletion from being picked up again by a `latest` or `all` policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.catalog import read_model_config


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
