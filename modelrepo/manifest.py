"""The per-model manifest in the bucket: version policy and version labels, TF Serving's semantics.

`<prefix>/<model>/dynoserve-model.json` mirrors ModelConfig's `model_version_policy` and
`version_labels` fields (proto3 JSON names), so editing it feels like editing TF Serving's config:

    {"model_version_policy": {"latest": {"num_versions": 2}},
     "version_labels": {"stable": 3, "canary": 4}}

No manifest means TF Serving's default: serve the latest version, no labels.

Two fields of our own give weighted rollouts (docs/rollouts.md; the rules are in
modelrepo.rollouts): `version_weights` splits requests that name no version or label,
`label_weights` splits the requests naming a label (the label must also be in `version_labels`:
that is where TF Serving's clients and a fallback go):

    {"version_weights": {"1": 90, "2": 10}, "label_weights": {"stable": {"1": 50, "2": 50}}}

The schema, its parser (`parse_manifest`) and its serialiser (`ModelManifest.render`) live here,
standard library only like the rest of `modelrepo`: `make publish` and `make labels` write the
file with `render` through sync/manifest_store.py, `export/demo.py` writes the demo's (a literal
this parser reads back in its test), and sync reads it on every pass. A manifest that breaks the
schema raises this module's ManifestError: a sync pass records it as the model's problem (the
model keeps its state); `make labels` and `make publish` turn it into sync's own error
(sync.errors.ManifestError, exit code 78).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelrepo import LABEL_RULE, MANIFEST_NAME, is_label
from modelrepo.rollouts import (
    ModelRollout,
    WeightsError,
    check_label_splits,
    check_split,
    split_json,
)


class ManifestError(ValueError):
    """A manifest that breaks the schema; the message names the model and what is wrong."""


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
    rollout: ModelRollout = field(default_factory=ModelRollout)
    """Weighted rollouts: version_weights and label_weights (empty: none)."""

    def render(self) -> str:
        """The manifest file's text (what parse_manifest reads back)."""
        body: dict[str, Any] = {
            "model_version_policy": self.policy.to_json(),
            "version_labels": dict(sorted(self.labels.items())),
        }
        if self.rollout.default is not None:
            body["version_weights"] = split_json(self.rollout.default)
        if self.rollout.labels:
            body["label_weights"] = {
                k: split_json(v) for k, v in sorted(self.rollout.labels.items())
            }
        return json.dumps(body, indent=2) + "\n"

    def describe(self) -> str:
        labels = " ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none"
        text = f"policy {self.policy.describe()}, labels {labels}"
        if not self.rollout.is_empty():
            text += f", weights {self.rollout.describe()}"
        return text


DEFAULT_MANIFEST = ModelManifest()


def parse_manifest(text: str | bytes, model: str) -> ModelManifest:
    """Parse a manifest; raise ManifestError naming the model and what is wrong."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{model}: {MANIFEST_NAME} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ManifestError(f"{model}: {MANIFEST_NAME} must be a JSON object")
    unknown = set(body) - {*MANIFEST_KEYS, "comment"}
    if unknown:
        raise ManifestError(f"{model}: {MANIFEST_NAME} has unknown keys {sorted(unknown)}")
    policy = _policy(body.get("model_version_policy"), model)
    labels = _labels(body.get("version_labels"), model)
    rollout = _rollout(body.get("version_weights"), body.get("label_weights"), model)
    unlabelled = sorted(set(rollout.labels) - set(labels))
    if unlabelled:
        raise ManifestError(
            f"{model}: label_weights has {unlabelled[0]!r}, which version_labels lacks: a "
            "weighted label also needs its version (where TF Serving's clients and a fallback go)"
        )
    return ModelManifest(policy, labels, rollout)


MANIFEST_KEYS = ("model_version_policy", "version_labels", "version_weights", "label_weights")


def _rollout(default: Any, per_label: Any, model: str) -> ModelRollout:
    try:
        split = None if default is None else check_split(default, f"{model}: version_weights")
        labels = check_label_splits(per_label, f"{model}: label_weights")
    except WeightsError as exc:
        raise ManifestError(str(exc)) from exc
    return ModelRollout(split, labels)


def weight_problems(manifest: ModelManifest, complete: Iterable[int]) -> list[str]:
    """Why the manifest's weights cannot be applied: a weighted version that is not complete
    or that the policy does not serve (a weight of 0 included: it names a version all the same).
    Empty when they can."""
    present = set(complete)
    served = manifest.policy.select(present)
    splits = {"version_weights": manifest.rollout.default}
    splits |= {f"label_weights.{k}": v for k, v in sorted(manifest.rollout.labels.items())}
    problems = []
    for where, split in splits.items():
        for version in sorted(split or {}):
            if version not in present:
                problems.append(f"{where}: version {version} is not published (complete)")
            elif version not in served:
                problems.append(
                    f"{where}: version {version} is not served by the policy "
                    f"({manifest.policy.describe()}, serves {sorted(served)})"
                )
    return problems


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
        valid = isinstance(versions, list) and all(is_manifest_version(v) for v in versions)
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
        if not is_manifest_version(version):
            raise ManifestError(f"{model}: label {name!r} must map to a positive version")
        labels[name] = int(version)
    return labels


def is_manifest_version(value: Any) -> bool:
    """A version as the manifest may spell it: a positive integer or its decimal string."""
    # proto3 JSON writes int64 as strings; accept both spellings.
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return value.isdigit() and int(value) > 0
    return isinstance(value, int) and value > 0
