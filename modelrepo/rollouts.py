"""Weighted rollouts: the weights' rules, the bucket a client falls in, and the file sync hands
the gateway (docs/rollouts.md). Standard library only, like the rest of `modelrepo`.

A split maps versions to integer weights from 0 to 100 that add up to exactly 100, so a weight
is the number of the 100 buckets a version gets and "90/10" means what it says. A client key
falls in bucket `sha256(model NUL key) mod 100` on every dyno; versions take consecutive bucket
ranges in ascending version order, so a canary (the higher version) grows downwards from bucket
99 and a client it has reached stays on it while its weight grows. A weight of 0 owns no bucket.

The rollouts file (`rollouts.json` under the model server's base path) has one writer, sync,
and one reader, the gateway; sync writes it atomically after every pass:

    {"format": 1, "models": {"shapes": {"default": {"1": 90, "2": 10},
                                         "labels": {"stable": {"1": 50, "2": 50}}}}}
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrepo import LABEL_RULE, MAX_VERSION, is_label, is_model_name

ROLLOUTS_FILE = "rollouts.json"
"""The weights sync hands the gateway, under the model server's base path."""
ROLLOUTS_FORMAT = 1
BUCKETS = 100
"""A client key falls in one of this many buckets; weights add up to this."""
MAX_CLIENT_KEY_CHARS = 256
"""Longest client key a request may give (query parameter or header)."""

Split = Mapping[int, int]
"""version -> weight (0-100, the weights add up to 100)."""


class WeightsError(ValueError):
    """Weights that break the rules; the message says which rule."""


def rollouts_file(base_path: Path) -> Path:
    """rollouts.json under a base path."""
    return base_path / ROLLOUTS_FILE


def check_split(raw: Any, where: str) -> dict[int, int]:
    """Weights as JSON gives them ({"1": 90, "2": 10}; keys may be ints) checked against the
    rules; raise WeightsError naming `where` and the rule broken."""
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{where}: weights must map versions to weights, e.g. 1=90 2=10")
    split: dict[int, int] = {}
    for key, weight in raw.items():
        version = _version(key)
        if version is None:
            raise WeightsError(f"{where}: {key!r} is not a version (a positive integer)")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= BUCKETS:
            raise WeightsError(
                f"{where}: the weight of version {version} must be an integer from 0 to "
                f"{BUCKETS}, got {weight!r}"
            )
        if version in split:
            raise WeightsError(f"{where}: version {version} is given twice")
        split[version] = weight
    total = sum(split.values())
    if total != BUCKETS:
        raise WeightsError(
            f"{where}: the weights add up to {total}; they must add up to {BUCKETS} "
            f"(a weight is a share of {BUCKETS} buckets)"
        )
    return dict(sorted(split.items()))


def _version(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key)):
        key = int(key)
    return key if isinstance(key, int) and 0 < key <= MAX_VERSION else None


def split_json(split: Split) -> dict[str, int]:
    """A split as JSON writes it: version strings in ascending order."""
    return {str(v): w for v, w in sorted(split.items())}


def client_bucket(model: str, key: str) -> int:
    """The bucket (0-99) of a client key for a model: the same on every dyno and process
    (SHA-256, not Python's salted hash()); the model is hashed in so one key's buckets differ
    between models."""
    digest = hashlib.sha256(model.encode() + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def random_bucket() -> int:
    """A bucket drawn per request for a request without a client key."""
    return random.randrange(BUCKETS)  # noqa: S311 - traffic splitting, not secrecy


def pick(split: Split, bucket: int, exclude: frozenset[int] = frozenset()) -> int | None:
    """The version that owns `bucket`. Versions in `exclude` (not available here) are left out
    and the others keep their proportions: the bucket is scaled onto their total weight.
    None when no version with a weight above 0 is left."""
    kept = [(v, w) for v, w in sorted(split.items()) if w > 0 and v not in exclude]
    total = sum(w for _, w in kept)
    if total == 0:
        return None
    point = bucket * total // BUCKETS
    for version, weight in kept:
        if point < weight:
            return version
        point -= weight
    return kept[-1][0]  # unreachable: point < total


@dataclass(frozen=True)
class ModelRollout:
    """One model's splits: for requests without a version or label, and per label."""

    default: dict[int, int] | None = None
    labels: dict[str, dict[int, int]] = field(default_factory=dict)

    def split_for(self, label: str | None) -> dict[int, int] | None:
        """The split a request follows: its label's, or the default one; None: no weights."""
        return self.default if label is None else self.labels.get(label)

    def is_empty(self) -> bool:
        return self.default is None and not self.labels

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.default is not None:
            body["default"] = split_json(self.default)
        if self.labels:
            body["labels"] = {k: split_json(v) for k, v in sorted(self.labels.items())}
        return body

    def describe(self) -> str:
        parts = []
        if self.default is not None:
            parts.append(_describe(self.default))
        parts += [f"{k}: {_describe(v)}" for k, v in sorted(self.labels.items())]
        return "; ".join(parts) or "none"


def _describe(split: Split) -> str:
    return " ".join(f"{v}={w}" for v, w in sorted(split.items()))


def parse_model_rollout(raw: Any, where: str) -> ModelRollout:
    """A model's entry of the rollouts file (`default`, `labels`), checked."""
    if not isinstance(raw, dict) or set(raw) - {"default", "labels"}:
        raise WeightsError(f"{where}: an entry has `default` and/or `labels` only")
    default = None
    if raw.get("default") is not None:
        default = check_split(raw["default"], f"{where}.default")
    return ModelRollout(default, check_label_splits(raw.get("labels") or {}, f"{where}.labels"))


def check_label_splits(raw: Any, where: str) -> dict[str, dict[int, int]]:
    """Weights per label (`{"stable": {"1": 90, "2": 10}}`), checked; None is none."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WeightsError(f"{where} must map labels to weights")
    labels = {}
    for label, split in raw.items():
        if not is_label(label):
            raise WeightsError(f"{where}: bad label {label!r}: {LABEL_RULE}")
        labels[label] = check_split(split, f"{where}.{label}")
    return labels


def render_rollouts(models: Mapping[str, ModelRollout]) -> str:
    """The rollouts file's text; models without weights are left out."""
    body = {
        "format": ROLLOUTS_FORMAT,
        "models": {n: r.to_json() for n, r in sorted(models.items()) if not r.is_empty()},
    }
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def parse_rollouts(text: str | bytes) -> dict[str, ModelRollout]:
    """The rollouts file's models; WeightsError when the file breaks the schema."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise WeightsError(f"{ROLLOUTS_FILE} is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != ROLLOUTS_FORMAT:
        raise WeightsError(f"{ROLLOUTS_FILE} must be an object with format {ROLLOUTS_FORMAT}")
    models = body.get("models")
    if not isinstance(models, dict):
        raise WeightsError(f"{ROLLOUTS_FILE}: models must be an object")
    found = {}
    for name, entry in models.items():
        if not is_model_name(name):
            raise WeightsError(f"{ROLLOUTS_FILE}: bad model name {name!r}")
        found[name] = parse_model_rollout(entry, f"{ROLLOUTS_FILE}: {name}")
    return found


def read_rollouts(path: Path) -> dict[str, ModelRollout]:
    """The rollouts file's models; {} when there is none. WeightsError when it is malformed."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    return parse_rollouts(text)
