"""What sync's status file says about the models on disk, for /readyz: why nothing is ready yet
(the bucket unreachable at boot, say) or why what is served may be stale (a cached copy); and
which versions are installed, so a pinned version still loading is a 503, not a 404; and which
versions failed, so /v1/models/<m> shows them with their error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The fields /readyz repeats; the whole file's schema is in docs/sync.md.
FIELDS = ("boot_completed_at", "degraded", "last_error", "consecutive_failures", "last_success_at")
MAX_ERROR_CHARS = 500


def read_status(path: Path) -> dict[str, Any] | None:
    """The whole status file; None when it is missing, unreadable or not a JSON object."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def sync_summary(path: Path) -> dict[str, Any] | None:
    """The status file's boot and error fields; None when there is no readable file."""
    status = read_status(path)
    if status is None:
        return None
    summary = {name: status.get(name) for name in FIELDS}
    if isinstance(summary["last_error"], str):
        summary["last_error"] = summary["last_error"][:MAX_ERROR_CHARS]
    return summary


def served_versions(path: Path, model: str) -> set[int]:
    """The versions sync last wrote into models.config for `model`; empty when unknown."""
    try:
        return {int(v) for v in _model_field(path, model, "served")}
    except (ValueError, TypeError):
        return set()


def failed_versions(path: Path, model: str) -> dict[int, str]:
    """Versions of `model` sync could not download, verify or get loaded, with why; {} if none."""
    try:
        failed = _model_field(path, model, "failed_versions")
        return {int(v): str(why)[:MAX_ERROR_CHARS] for v, why in failed.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def _model_field(path: Path, model: str, field: str) -> Any:
    """`models.<model>.<field>` of the status file, or None when any step is missing."""
    try:
        return (read_status(path) or {})["models"][model][field]
    except (KeyError, TypeError):
        return None


def not_ready_reason(models: dict[str, str], sync: dict[str, Any] | None) -> str:
    """One sentence on why the dyno is not ready."""
    if sync is not None and not sync.get("boot_completed_at"):
        if sync.get("last_error"):
            return f"sync has not completed its boot pass: {sync['last_error']}"
        return "sync has not completed its boot pass yet"
    if not models:
        return "no model is configured yet"
    waiting = sorted(name for name, state in models.items() if state != "AVAILABLE")
    return "no AVAILABLE version yet for " + ", ".join(waiting)
