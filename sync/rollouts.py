"""Hands the manifests' weights to the gateway: `rollouts.json` beside models.config, written
after it on every pass (schema and rules in modelrepo/rollouts.py, docs/rollouts.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from modelrepo.manifest import weight_problems
from modelrepo.rollouts import ModelRollout, WeightsError, read_rollouts, render_rollouts
from sync.files import replace_text_if_changed
from sync.planner import ModelPlan
from sync.source import Listing

log = logging.getLogger(__name__)


def write_rollouts(
    path: Path, listing: Listing, plans: Mapping[str, ModelPlan], errors: list[str]
) -> dict[str, ModelRollout]:
    """Write each served model's weights; returns them. Weights that cannot be applied (a
    version not published, or not served by the policy) are reported in the plan's notes and
    the pass's errors, and the model keeps the weights it had, as a bad manifest keeps its
    model's state. An unreadable manifest or an empty listing also keeps them."""
    before = read_previous_rollouts(path)
    rollouts = {}
    for name, plan in sorted(plans.items()):
        if not plan.served.versions:
            continue  # nothing served (pruned, or nothing installed yet): nothing to split
        rollout = _rollout(name, listing, plan, errors, before.get(name))
        if rollout is not None and not rollout.is_empty():
            rollouts[name] = rollout
    _store(path, rollouts)
    return rollouts


def _rollout(
    name: str, listing: Listing, plan: ModelPlan, errors: list[str], before: ModelRollout | None
) -> ModelRollout | None:
    manifest = listing.manifests.get(name)
    complete = set(listing.complete.get(name, {}))
    if manifest is None or not complete:
        return before
    problems = weight_problems(manifest, complete)
    for problem in problems:
        message = f"{name}: weights not applied, keeping the previous ones: {problem}"
        log.error("%s", message)
        plan.notes.append(message)
        errors.append(message)
    return before if problems else manifest.rollout


def read_previous_rollouts(path: Path) -> dict[str, ModelRollout]:
    """The weights written last; {} when there are none or the file is damaged."""
    try:
        return read_rollouts(path)
    except WeightsError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}


def _store(path: Path, rollouts: Mapping[str, ModelRollout]) -> None:
    if not replace_text_if_changed(path, render_rollouts(rollouts)):
        return
    described = "; ".join(f"{n}: {r.describe()}" for n, r in sorted(rollouts.items()))
    log.info("wrote %s: %s", path, described or "no weights")
