"""The per-model manifest in the bucket: version policy and version labels, TF Serving's semantics.

`<prefix>/<model>/dynoserve-model.json` mirrors ModelConfig's `model_version_policy` and
`version_labels` fields (proto3 JSON names), so editing it feels like editing TF Serving's config:

    {"model_version_policy": {"latest": {"num_versions": 2}},
     "version_labels": {"stable": 3, "canary": 4}}

No manifest means TF Serving's default: serve the latest version, no labels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelrepo import LABEL_RULE, MANIFEST_NAME, is_label
from sync.errors import ManifestError


@dataclass(frozen=True)
class VersionPolicy:
    """ServableVersionPolicy: `latest` (num_versions), `all`, or `specific` (versions)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, available: Iterable[int]) -> set[int]:
        """The versions this policy serves out of the complete ones."""
        present = set(available)
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return present & self.versions
        return set(sorted(present)[-self.num_versions :])

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ",".join(str(v) for v in sorted(self.versions))
        return "all"

    def to_json(self) -> dict[str, Any]:
        """The proto3 JSON form `_policy` parses."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "specific":
            return {"specific": {"versions": sorted(self.versions)}}
        return {"all": {}}


@dataclass(frozen=True)
class ModelManifest:
    """A model's serving policy as set in the bucket."""

    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = field(default_factory=dict)

    def render(self) -> str:
        """The manifest file's text (what parse_manifest reads back)."""
        body = {
            "model_version_policy": self.policy.to_json(),
            "version_labels": dict(sorted(self.labels.items())),
        }
        return json.dumps(body, indent=2) + "\n"

    def describe(self) -> str:
        labels = " ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none"
        return f"policy {self.policy.describe()}, labels {labels}"


DEFAULT_MANIFEST = ModelManifest()


def parse_manifest(text: str | bytes, model: str) -> ModelManifest:
    """Parse a manifest; raise ManifestError naming the model and what is wrong."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{model}: {MANIFEST_NAME} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ManifestError(f"{model}: {MANIFEST_NAME} must be a JSON object")
    unknown = set(body) - {"model_version_policy", "version_labels", "comment"}
    if unknown:
        raise ManifestError(f"{model}: {MANIFEST_NAME} has unknown keys {sorted(unknown)}")
    policy = _policy(body.get("model_version_policy"), model)
    labels = _labels(body.get("version_labels"), model)
    return ModelManifest(policy, labels)


def _policy(raw: Any, model: str) -> VersionPolicy:
    if raw is None:
        return VersionPolicy()
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ManifestError(f"{model}: model_version_policy needs one of latest, all, specific")
    kind, body = next(iter(raw.items()))
    body = body or {}
    if kind == "all" and isinstance(body, dict):
        return VersionPolicy("all")
    if kind == "latest" and isinstance(body, dict):
        count = body.get("num_versions", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ManifestError(f"{model}: latest.num_versions must be a positive integer")
        return VersionPolicy("latest", num_versions=count)
    if kind == "specific" and isinstance(body, dict):
        versions = body.get("versions")
        valid = isinstance(versions, list) and all(_is_version(v) for v in versions)
        if not valid or not versions:
            raise ManifestError(f"{model}: specific.versions must be a non-empty list of versions")
        return VersionPolicy("specific", versions=frozenset(int(v) for v in versions))
    raise ManifestError(f"{model}: unknown model_version_policy {kind!r}")


def _labels(raw: Any, model: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{model}: version_labels must map label names to versions")
    labels: dict[str, int] = {}
    for name, version in raw.items():
        if not is_label(name):
            raise ManifestError(f"{model}: bad label name {name!r}: {LABEL_RULE}")
        if not _is_version(version):
            raise ManifestError(f"{model}: label {name!r} must map to a positive version")
        labels[name] = int(version)
    return labels


def _is_version(value: Any) -> bool:
    # proto3 JSON writes int64 as strings; accept both spellings.
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return value.isdigit() and int(value) > 0
    return isinstance(value, int) and value > 0


def parse_policy(text: str) -> VersionPolicy:
    """The command-line form: `all`, `latest` / `latest:N`, `specific:1,2`."""
    kind, _, rest = text.strip().partition(":")
    try:
        if kind == "all" and not rest:
            return VersionPolicy("all")
        if kind == "latest":
            count = int(rest) if rest else 1
            if count >= 1:
                return VersionPolicy("latest", num_versions=count)
        if kind == "specific":
            versions = frozenset(int(v) for v in rest.split(","))
            if versions and all(v > 0 for v in versions):
                return VersionPolicy("specific", versions=versions)
    except ValueError:
        pass
    raise ManifestError(f"policy {text!r}: use all, latest:N or specific:V1,V2")


def parse_label_assignments(items: Iterable[str]) -> dict[str, int | None]:
    """`stable=3` sets a label, `stable=` removes it: label -> version, or None to remove."""
    changes: dict[str, int | None] = {}
    for item in items:
        for word in item.split():  # LABELS="stable=1 canary=2" arrives as one argument
            name, sign, version = word.partition("=")
            if not sign or not is_label(name):
                raise ManifestError(f"{word!r}: write LABEL=VERSION (or LABEL= to remove it)")
            if version and not _is_version(version):
                raise ManifestError(f"{word!r}: the version must be a positive integer")
            changes[name] = int(version) if version else None
    return changes
