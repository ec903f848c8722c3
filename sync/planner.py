"""Decides what `models.config` serves, from the bucket, the disk and the model server's state.

Pure functions, no I/O, so the rules TF Serving imposes are tested directly:
- a version is served only when installed; if a wanted version failed, the versions served
  before stay (a corrupt upload never reduces what is served);
- a label may point only at a served version, and (TF Serving's UpdateModelVersionLabelMap)
  only at one the server reports AVAILABLE, except a new label when the server runs with
  --allow_version_labels_for_unavailable_models; otherwise the label stays where it was, its
  old version stays served, and the move is pending until the target is loaded;
- a version leaves the disk only after the server stopped holding it;
- a model gone from the source keeps serving (an emptied bucket or a wrong prefix must not
  wipe the dyno) unless it is pruned (DYNOSERVE_SYNC_PRUNE, `python -m sync --prune`).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path

from modelrepo.manifest import ModelManifest
from modelrepo.modelconfig import ServedModel
from sync.server_status import HOLDING_STATES


@dataclass(frozen=True)
class ModelInputs:
    """Everything known about one model in one pass."""

    name: str
    base_path: Path
    complete: Set[int]
    """Complete versions in the source (empty when the source lists none)."""
    manifest: ModelManifest | None
    """The model's manifest; None when it is unreadable (the model keeps its current state)."""
    installed: Set[int]
    failed: Set[int]
    """Versions that failed to install in this pass."""
    previous: ServedModel | None
    states: Mapping[int, str] | None
    """Model server's version states; None when the server did not answer."""
    dropped: bool = False
    """The model is gone from the source and is being pruned: serve nothing, delete when free."""


@dataclass
class ModelPlan:
    """What to serve and what to clean up for one model."""

    served: ServedModel
    pending_labels: dict[str, int] = field(default_factory=dict)
    deletable: set[int] = field(default_factory=set)
    waiting_removal: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def wanted_versions(complete: Set[int], manifest: ModelManifest | None) -> set[int]:
    """The versions the policy picks out of the complete ones (what to download)."""
    if manifest is None:
        return set()
    return manifest.policy.select(complete)


def plan_model(inputs: ModelInputs, labels_for_unavailable: bool) -> ModelPlan:
    if inputs.dropped:
        plan = ModelPlan(ServedModel(inputs.name, inputs.base_path, ()))
        _removals(inputs, set(), plan)
        return plan
    previous_versions = set(inputs.previous.versions) if inputs.previous else set()
    previous_labels = dict(inputs.previous.labels) if inputs.previous else {}
    frozen = inputs.manifest is None or not inputs.complete
    if frozen:
        # An empty or unreadable listing is no reason to stop serving (aws s3 sync --delete).
        served = previous_versions & set(inputs.installed)
        wanted_labels = previous_labels
    else:
        served = _served(inputs, previous_versions)
        wanted_labels = dict(inputs.manifest.labels) if inputs.manifest else {}
    plan = ModelPlan(ServedModel(inputs.name, inputs.base_path, tuple(sorted(served))))
    labels = _labels(inputs, served, wanted_labels, previous_labels, labels_for_unavailable, plan)
    plan.served = ServedModel(inputs.name, inputs.base_path, tuple(sorted(served)), labels)
    if not frozen:
        _removals(inputs, served, plan)
    return plan


def _served(inputs: ModelInputs, previous_versions: set[int]) -> set[int]:
    wanted = wanted_versions(inputs.complete, inputs.manifest)
    served = wanted & set(inputs.installed)
    if wanted - served:
        # A wanted version could not be installed: keep serving what served before.
        served |= previous_versions & set(inputs.installed)
    return served


def _labels(
    inputs: ModelInputs,
    served: set[int],
    wanted: Mapping[str, int],
    previous: Mapping[str, int],
    for_unavailable: bool,
    plan: ModelPlan,
) -> dict[str, int]:
    def assignable(label: str, version: int) -> bool:
        if inputs.states is not None and inputs.states.get(version) == "AVAILABLE":
            return True
        # With the server flag, a label that is new or unchanged may name an unloaded version.
        return for_unavailable and previous.get(label, version) == version

    labels: dict[str, int] = {}
    for label, target in sorted(wanted.items()):
        before = previous.get(label)
        if target in served and assignable(label, target):
            labels[label] = target
        elif target not in served and target not in inputs.failed:
            plan.notes.append(f"label {label!r} -> {target} ignored: version {target} not served")
            if before in served and assignable(label, before):
                labels[label] = before
        else:
            plan.pending_labels[label] = target
            if before is not None and before in inputs.installed and assignable(label, before):
                # TF Serving's two-step swap: the old target stays served (even if the policy
                # has moved on) and keeps the label until the new target is loaded.
                labels[label] = before
                served.add(before)
    return labels


def _removals(inputs: ModelInputs, served: set[int], plan: ModelPlan) -> None:
    for version in sorted(set(inputs.installed) - served):
        held = inputs.states is None or inputs.states.get(version, "END") in HOLDING_STATES
        (plan.waiting_removal if held else plan.deletable).add(version)
