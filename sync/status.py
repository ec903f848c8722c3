"""Sync's side of the status file (`sync-status.json`): the counters and last-pass facts kept in
memory and written atomically after every pass, so readers never see half of it.

The file's schema, and its reader, are `modelrepo.syncstatus` (fields in docs/sync.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from modelrepo.syncstatus import SyncStatus, now_iso, render_status
from sync.files import atomic_write_text


class StatusBook(SyncStatus):
    """The status this sync process keeps, and where it writes it."""

    def __init__(self, path: Path, source: str) -> None:
        super().__init__(source)
        self.path = path

    def record_pass(self, seconds: float, errors: list[str]) -> None:
        self.passes_total += 1
        self.last_attempt_at = now_iso()
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
        self.boot_completed_at = now_iso()
        self.write()

    def write(self) -> None:
        atomic_write_text(self.path, render_status(self))
