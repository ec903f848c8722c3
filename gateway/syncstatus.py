"""What sync's status file says about the models on disk, for /readyz: why nothing is ready yet
(the bucket unreachable at boot, say) or why what is served may be stale (a cached copy); and
which versions are installed, so a pinned version still loading is a 503, not a 404; and which
versions failed, so /v1/models/<m> shows them with their error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelrepo.syncstatus import read_status

# The fields /readyz repeats; the whole file's schema is modelrepo/syncstatus.py (docs/sync.md).
FIELDS = ("boot_completed_at", "degraded", "last_error", "consecutive_failures", "last_success_at")
MAX_ERROR_CHARS = 500


def sync_summary(path: Path) -> dict[str, Any] | None:
    """The status file's boot and error fields; None when there is no readable file."""
    status = read_status(path)
    if status is None:
        return None
    summary = {name: getattr(status, name) for name in FIELDS}
    if isinstance(summary["last_error"], str):
        summary["last_error"] = summary["last_error"][:MAX_ERROR_CHARS]
    return summary


def served_versions(path: Path, model: str) -> set[int]:
    """The versions sync last wrote into models.config for `model`; empty when unknown."""
    status = read_status(path)
    entry = status.models.get(model) if status is not None else None
    return set(entry.served) if entry is not None else set()


def failed_versions(path: Path, model: str) -> dict[int, str]:
    """Versions of `model` sync could not download, verify or get loaded, with why; {} if none."""
    status = read_status(path)
    entry = status.models.get(model) if status is not None else None
    try:
        failed = entry.failed_versions.items() if entry is not None else ()
        return {int(v): why[:MAX_ERROR_CHARS] for v, why in failed}
    except ValueError:
        return {}


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
