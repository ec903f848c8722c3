"""The status file (`sync-status.json`): what the gateway exposes on /metrics about sync.

Schema in docs/sync.md; written atomically after every pass so readers never see half of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sync.files import atomic_write_text

STATUS_FORMAT = 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ModelStatus:
    """One model's state after the last pass."""

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


@dataclass
class StatusBook:
    """Counters and last-pass facts, kept in memory and dumped to the status file."""

    path: Path
    source: str
    boot_completed_at: str | None = None
    degraded: str | None = None
    started_at: str = field(default_factory=_now)
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

    def record_pass(self, seconds: float, errors: list[str]) -> None:
        self.passes_total += 1
        self.last_attempt_at = _now()
        self.last_pass_seconds = round(seconds, 3)
        if errors:
            self.failures_total += 1
            self.consecutive_failures += 1
            self.last_error = "; ".join(errors)[:2000]
            return
        self.consecutive_failures = 0
        self.last_error = None
        self.degraded = None
        self.last_success_at = self.last_attempt_at
        self.last_success_unix = time.time()

    def boot_done(self) -> None:
        self.boot_completed_at = _now()
        self.write()

    def to_dict(self) -> dict[str, Any]:
        body = {k: v for k, v in vars(self).items() if k not in ("path", "models")}
        body["format"] = STATUS_FORMAT
        models = self.models.values()
        # Flat numbers at the top level: the gateway exports each as dynoserve_sync_<field>, a
        # counter when the name ends in _total, else a gauge.
        body["versions_served"] = sum(len(m.served) for m in models)
        body["versions_in_source"] = sum(len(m.available_in_source) for m in models)
        body["versions_failed"] = sum(len(m.failed_versions) for m in models)
        body["labels_pending"] = sum(len(m.pending_labels) for m in models)
        body["versions_waiting_removal"] = sum(len(m.waiting_removal) for m in models)
        body["models_missing_from_source"] = sum(1 for m in models if m.missing_from_source)
        body["degraded_flag"] = 1 if self.degraded else 0
        body["models"] = {name: vars(model) for name, model in sorted(self.models.items())}
        return body

    def write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
