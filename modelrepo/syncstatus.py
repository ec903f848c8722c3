"""Sync's status file (`sync-status.json`): its schema as typed records, the body sync writes
(`SyncStatus.to_json`) and the one reader (`read_status`) the gateway's /readyz, /metrics and
/v1/models use. Standard library only, like the rest of `modelrepo`; the fields and their
meaning are in docs/sync.md.

Top-level numbers are flat so the gateway can export each as `dynoserve_sync_<field>`
(`SyncStatus.numbers`): a counter when the name ends in `_total`, else a gauge.

The reader is lenient, as a scrape or a readiness probe must be: a field of the wrong type
reads as its default (an empty list, None, 0), a file that is missing or not a JSON object as
no status at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

STATUS_FORMAT = 1


def now_iso() -> str:
    """The time the status file's `*_at` fields are written in (UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ModelStatus:
    """One model's state after the last pass (`models.<name>`)."""

    served: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    pending_labels: dict[str, int] = field(default_factory=dict)
    available_in_source: list[int] = field(default_factory=list)
    incomplete_in_source: list[int] = field(default_factory=list)
    waiting_removal: list[int] = field(default_factory=list)
    missing_from_source: bool = False
    problems: list[str] = field(default_factory=list)
    failed_versions: dict[str, str] = field(default_factory=dict)
    """Version -> why it is not served (download, checksum or load failure), until fixed."""
    weights: dict[str, Any] = field(default_factory=dict)
    """The rollout weights in effect (rollouts.json's entry: default, labels); {} for none."""

    @classmethod
    def from_json(cls, raw: object) -> Self:
        return cls(**_typed_fields(cls, raw))


@dataclass
class SyncStatus:
    """The whole file: where sync reads from, its last passes, its counters, each model."""

    source: str = ""
    boot_completed_at: str | None = None
    degraded: str | None = None
    started_at: str | None = field(default_factory=now_iso)
    last_attempt_at: str | None = None
    last_success_at: str | None = None
    last_success_unix: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    passes_total: int = 0
    failures_total: int = 0
    versions_installed_total: int = 0
    versions_removed_total: int = 0
    bytes_downloaded_total: int = 0
    config_writes_total: int = 0
    last_pass_seconds: float = 0.0
    models: dict[str, ModelStatus] = field(default_factory=dict)

    def sums(self) -> dict[str, int]:
        """The numbers summed over models (and `degraded` as 0/1), written beside the rest."""
        models = self.models.values()
        return {
            "versions_served": sum(len(m.served) for m in models),
            "versions_in_source": sum(len(m.available_in_source) for m in models),
            "versions_failed": sum(len(m.failed_versions) for m in models),
            "labels_pending": sum(len(m.pending_labels) for m in models),
            "versions_waiting_removal": sum(len(m.waiting_removal) for m in models),
            "models_missing_from_source": sum(1 for m in models if m.missing_from_source),
            "degraded_flag": 1 if self.degraded else 0,
        }

    def numbers(self) -> dict[str, float]:
        """Every number at the file's top level (unset ones left out), by field name."""
        body = self.to_json()
        return {
            k: float(v)
            for k, v in body.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def to_json(self) -> dict[str, Any]:
        """The file's body (see `render_status`)."""
        body: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(SyncStatus)}
        body["format"] = STATUS_FORMAT
        body.update(self.sums())
        body["models"] = {name: vars(model) for name, model in sorted(self.models.items())}
        return body

    @classmethod
    def from_json(cls, raw: object) -> Self:
        found = _typed_fields(cls, raw, skip={"models"})
        models = raw.get("models") if isinstance(raw, dict) else None
        if isinstance(models, dict):
            found["models"] = {str(n): ModelStatus.from_json(m) for n, m in models.items()}
        return cls(**found)


def render_status(status: SyncStatus) -> str:
    """The file's text: JSON, keys sorted, one field a line."""
    return json.dumps(status.to_json(), indent=2, sort_keys=True) + "\n"


def read_status(path: Path) -> SyncStatus | None:
    """The status file; None when it is missing, unreadable or not a JSON object."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return SyncStatus.from_json(body) if isinstance(body, dict) else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _map_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


def _str(value: object) -> bool:
    return isinstance(value, str)


# A checker per annotation used above (the annotations are strings: `from __future__`).
_CHECKS: Mapping[str, Callable[[object], bool]] = {
    "str": _str,
    "str | None": lambda v: v is None or _str(v),
    "int": _is_int,
    "float": _is_number,
    "float | None": lambda v: v is None or _is_number(v),
    "bool": lambda v: isinstance(v, bool),
    "list[int]": _list_of(_is_int),
    "list[str]": _list_of(_str),
    "dict[str, int]": _map_of(_is_int),
    "dict[str, str]": _map_of(_str),
    "dict[str, Any]": lambda v: isinstance(v, dict),
}


def _typed_fields(cls: type, raw: object, skip: frozenset[str] | set[str] = frozenset()) -> dict:
    """The dataclass's fields found in `raw` with the right type (others keep their default)."""
    if not isinstance(raw, dict):
        return {}
    return {
        f.name: raw[f.name]
        for f in fields(cls)
        if f.name not in skip and f.name in raw and _CHECKS[str(f.type)](raw[f.name])
    }
