"""Which versions exist under a model's base path, and which of them the version policy aspires.

Like TF Serving's FileSystemStoragePathSource: version directories are all-digit names; other
entries (staging folders, dot-files) are ignored. Unlike it, a version directory is only offered
once it looks complete and settled, so a half-copied version is never loaded (docs/serving.md).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("serving.source")

# A version whose files changed less than this long ago must look the same on two scans.
QUIET_SECONDS = 2.0
_GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(relative name, size, mtime_ns) of every file under path, or None if it vanished."""
    entries = []
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                stat = os.stat(os.path.join(root, name))
                rel = os.path.relpath(os.path.join(root, name), path)
                entries.append((rel, stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(entries))


class VersionScanner:
    """Scans one base path; remembers fingerprints so a still-changing version waits a poll."""

    def __init__(self, model_name: str, base_path: str) -> None:
        self.model_name = model_name
        self.base_path = Path(base_path)
        self._seen: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._warned_missing = False

    def scan(self) -> list[int] | None:
        """Complete, settled version numbers; None when the base path cannot be read."""
        try:
            names = os.listdir(self.base_path)
        except OSError as exc:
            if not self._warned_missing:
                log.error(
                    "File system storage path source: Could not find base path %s for "
                    "servable %s with error %s",
                    self.base_path,
                    self.model_name,
                    exc.strerror,
                )
                self._warned_missing = True
            return None
        self._warned_missing = False
        versions = [int(name) for name in names if name.isdigit()]
        ready = [v for v in versions if self._settled(v)]
        if not versions:
            log.warning(
                "No versions of servable %s found under base path %s. Did you forget to name "
                "your leaf directory as an integer (e.g. %s/1)?",
                self.model_name,
                self.base_path,
                self.base_path,
            )
        return sorted(ready)

    def _settled(self, version: int) -> bool:
        path = self.base_path / str(version)
        if not any((path / name).is_file() for name in _GRAPH_FILES):
            return False
        current = _fingerprint(path)
        if current is None:
            return False
        previous = self._seen.get(version)
        self._seen[version] = current
        newest = max((mtime for _n, _s, mtime in current), default=0) / 1e9
        return previous == current or time.time() - newest >= QUIET_SECONDS


def aspired_versions(policy: Any, available: list[int]) -> list[int]:
    """The versions a ServableVersionPolicy selects from those on disk (default: latest 1)."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return sorted(v for v in available if v in wanted)
    count = policy.latest.num_versions if which == "latest" else 1
    return sorted(available)[-max(count, 1) :] if available else []
