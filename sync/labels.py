"""`python -m sync.labels` (`make labels`): set a model's version labels, policy and weights.

Writes the model's manifest where sync reads it, with sync's own settings: the bucket when
BUCKETEER_BUCKET_NAME is set (the same credentials and endpoint), else the export folder that
`make run` serves. Labels are checked before anything is written: each must name a complete
version that the policy serves, or sync would ignore it; so must each weighted version
(docs/rollouts.md). The file's schema is modelrepo/manifest.py; its command-line forms
(LABEL=VERSION, the policy, the weights) are parsed here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envsettings import SettingsError
from modelrepo import LABEL_RULE, MODEL_NAME_RULE, is_label, is_model_name
from modelrepo.manifest import (
    DEFAULT_MANIFEST,
    ModelManifest,
    VersionPolicy,
    is_manifest_version,
    weight_problems,
)
from modelrepo.rollouts import ModelRollout, WeightsError, check_split
from sync.cli import start_tool
from sync.errors import EX_USAGE, LabelsError, ManifestError, SyncError
from sync.manifest_store import BucketManifests, FolderManifests, ManifestStore
from sync.settings import Settings

log = logging.getLogger("sync.labels")


def open_store(settings: Settings) -> BucketManifests | FolderManifests:
    """The bucket when one is configured, else the export folder (as sync's source)."""
    if settings.s3 is not None:
        return BucketManifests(settings.s3)
    return FolderManifests(settings.export_dir)


@dataclass(frozen=True)
class WeightsChange:
    """`--weights` (None: remove the split) for the default route or, with `--weights-label`,
    for a label."""

    split: dict[int, int] | None
    label: str | None = None


def updated_manifest(
    current: ModelManifest | None,
    changes: Mapping[str, int | None],
    policy: VersionPolicy | None,
    weights: WeightsChange | None = None,
) -> ModelManifest:
    """`current` with the label changes (None removes a label), if given a new policy, and
    if given new weights. Removing a label removes its weights too."""
    base = current or DEFAULT_MANIFEST
    labels = dict(base.labels)
    for name, version in changes.items():
        if version is None:
            labels.pop(name, None)
        else:
            labels[name] = version
    default, per_label = base.rollout.default, dict(base.rollout.labels)
    if weights is not None and weights.label is None:
        default = weights.split
    elif weights is not None and weights.label is not None:
        per_label.pop(weights.label, None)
        if weights.split is not None:
            per_label[weights.label] = weights.split
    removed = {name for name, version in changes.items() if version is None}
    per_label = {k: v for k, v in per_label.items() if k not in removed}
    return ModelManifest(policy or base.policy, labels, ModelRollout(default, per_label))


def check_serves_labels(manifest: ModelManifest, versions: set[int], model: str) -> None:
    """Refuse labels sync would ignore: on a version not published, or not served."""
    if not versions and manifest.labels:
        raise LabelsError(f"{model} has no published version yet: run make publish first")
    served = manifest.policy.select(versions)
    for label, version in sorted(manifest.labels.items()):
        if version not in versions:
            raise LabelsError(
                f"label {label!r} -> {version}: {model} has no complete version {version} "
                f"(published: {_list(versions)}); publish it first"
            )
        if version not in served:
            wanted = ",".join(str(v) for v in sorted(set(manifest.labels.values()) | served))
            raise LabelsError(
                f"label {label!r} -> {version}: the policy ({manifest.policy.describe()}) serves "
                f"{_list(served)} only; add POLICY=all or POLICY=specific:{wanted} "
                f"(--policy with python -m sync.labels)"
            )
    problems = weight_problems(manifest, versions)
    if problems:
        raise LabelsError(f"{model}: {problems[0]}; publish it or widen the policy first")
    for label in sorted(manifest.rollout.labels):
        if label not in manifest.labels:
            raise LabelsError(f"{model}: weights for label {label!r}, which is not set")


def apply(
    store: ManifestStore,
    model: str,
    changes: Mapping[str, int | None],
    policy: VersionPolicy | None,
    weights: WeightsChange | None = None,
) -> ModelManifest:
    """Read, change, check and write the model's manifest; returns what is now in place."""
    current = store.read(model)
    manifest = updated_manifest(current, changes, policy, weights)
    check_serves_labels(manifest, store.versions(model), model)
    where = store.describe(model)
    if manifest == current:
        log.info("%s unchanged: %s", where, manifest.describe())
        return manifest
    store.write(model, manifest)
    before = current.describe() if current else "no manifest (latest 1, no labels)"
    log.info("wrote %s: %s (was %s)", where, manifest.describe(), before)
    return manifest


def _list(versions: set[int]) -> str:
    return ", ".join(str(v) for v in sorted(versions)) or "none"


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
            if version and not is_manifest_version(version):
                raise ManifestError(f"{word!r}: the version must be a positive integer")
            changes[name] = int(version) if version else None
    return changes


WEIGHTS_OFF = "none"
"""`--weights none` removes a split."""


def parse_weight_assignments(text: str) -> dict[int, int] | None:
    """`1=90 2=10` (or `1=90,2=10`) as a checked split; `none` for no split."""
    if text.strip() == WEIGHTS_OFF:
        return None
    raw: dict[str, int] = {}
    for word in text.replace(",", " ").split():
        version, sign, weight = word.partition("=")
        if not sign or not weight.isascii() or not weight.isdigit():
            raise ManifestError(f"{word!r}: write VERSION=WEIGHT, e.g. 1=90 2=10 (or none)")
        if version in raw:
            raise ManifestError(f"{word!r}: version {version} is given twice")
        raw[version] = int(weight)
    try:
        return check_split(raw, "weights")
    except WeightsError as exc:
        raise ManifestError(str(exc)) from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sync.labels",
        description="Set version labels (and the version policy and weights) in a model's "
        "manifest, in the bucket when BUCKETEER_BUCKET_NAME is set, else in the export folder. "
        "Without labels, --policy or --weights, show the manifest.",
        epilog="example: python -m sync.labels --name shapes stable=1 canary=2 --policy all "
        '(make labels NAME=shapes LABELS="stable=1 canary=2" POLICY=all); LABEL= removes one. '
        '--weights "1=90 2=10" splits unpinned requests 90/10 (make labels NAME=shapes '
        'WEIGHTS="1=90 2=10"), with --weights-label stable the requests for ?label=stable; '
        "--weights none removes the split. Exit codes: 0 ok, 64 usage, 65 a label or weight "
        "sync would ignore, 69/77/78 as sync.",
    )
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("labels", nargs="*", metavar="LABEL=VERSION", help="labels to set")
    parser.add_argument("--policy", help="all, latest:N or specific:V1,V2 (default: keep)")
    parser.add_argument(
        "--weights", help="VERSION=WEIGHT ... (integers 0-100 adding up to 100), or none"
    )
    parser.add_argument("--weights-label", help="the label the weights split (default: none)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = start_tool(parse_args, argv)
    if isinstance(args, int):
        return args
    try:
        if not is_model_name(args.name):
            raise ManifestError(f"model name {args.name!r}: use {MODEL_NAME_RULE}")
        changes = parse_label_assignments(args.labels)
        policy = parse_policy(args.policy) if args.policy else None
        weights = _weights_change(args)
    except ManifestError as exc:
        # The code in the message too: through make, make exits 2 and shows it as "Error 64".
        log.error("labels not changed (exit %d): %s", EX_USAGE, exc)
        return EX_USAGE
    try:
        store = open_store(Settings.from_env(os.environ))
        try:
            if changes or policy or weights:
                apply(store, args.name, changes, policy, weights)
            else:
                _show(store, args.name)
        finally:
            store.close()
    except (SyncError, SettingsError) as exc:
        log.error("labels not changed (exit %d): %s", exc.exit_code, exc)
        return exc.exit_code
    return 0


def _weights_change(args: argparse.Namespace) -> WeightsChange | None:
    if args.weights is None:
        if args.weights_label:
            raise ManifestError("--weights-label needs --weights (WEIGHTS= with make labels)")
        return None
    label = args.weights_label or None
    if label is not None and not is_label(label):
        raise ManifestError(f"--weights-label {label!r}: {LABEL_RULE}")
    return WeightsChange(parse_weight_assignments(args.weights), label)


def _show(store: ManifestStore, model: str) -> None:
    manifest = store.read(model)
    versions = _list(store.versions(model))
    if manifest is None:
        log.info("%s: none (latest 1, no labels); versions: %s", store.describe(model), versions)
        return
    log.info("%s: %s; versions: %s", store.describe(model), manifest.describe(), versions)
    sys.stdout.write(manifest.render())


if __name__ == "__main__":
    sys.exit(main())
