"""Which versions exist under a model's base path, and which of them the version policy aspires.

Like TF Serving's FileSystemStoragePathSource: version directories are all-digit names; other
entries (staging folders, dot-files) are ignored; whatever is there is offered, and a version
that cannot be loaded fails its load and is reported END with the error. One guard remains (a
documented difference, docs/serving.md): a version is offered once its files did not change
between two looks QUIET_SECONDS apart, so a copy still in progress is not caught half-way.
A finished version, broken or not, is offered at most QUIET_SECONDS after its last write.
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
RECHECK_SECONDS = 0.5


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


Fingerprint = tuple[tuple[str, int, int], ...]


def _age(fingerprint: Fingerprint) -> float:
    newest = max((mtime for _name, _size, mtime in fingerprint), default=0) / 1e9
    return time.time() - newest


class VersionScanner:
    """Scans one base path; a version is offered once its files are quiet (see module doc)."""

    def __init__(self, model_name: str, base_path: str) -> None:
        self.model_name = model_name
        self.base_path = Path(base_path)
        self._seen: dict[int, Fingerprint] = {}
        self._warned_missing = False

    def scan(self) -> list[int] | None:
        """Settled version numbers; None when the base path cannot be read."""
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
        versions = sorted(int(name) for name in names if name.isdigit())
        if not versions:
            log.warning(
                "No versions of servable %s found under base path %s. Did you forget to name "
                "your leaf directory as an integer (e.g. %s/1)?",
                self.model_name,
                self.base_path,
                self.base_path,
            )
        return self._settled(versions)

    def _path(self, version: int) -> Path:
        return self.base_path / str(version)

    def _settled(self, candidates: list[int]) -> list[int]:
        """Versions whose files did not change between two looks and are QUIET_SECONDS old."""
        now = {v: fp for v in candidates if (fp := _fingerprint(self._path(v))) is not None}
        ready = [
            v for v, fp in now.items() if self._seen.get(v) == fp and _age(fp) >= QUIET_SECONDS
        ]
        pending = [v for v in now if v not in ready]
        if pending:
            # New or changing: look again after a moment (or once it has been quiet long enough),
            # so even a single scan (poll interval 0) can decide.
            youngest = min(_age(now[v]) for v in pending)
            time.sleep(min(QUIET_SECONDS, max(RECHECK_SECONDS, QUIET_SECONDS - youngest)))
        seen = dict(now)
        for version in pending:
            again = _fingerprint(self._path(version))
            if again is None:
                continue
            seen[version] = again
            if again == now[version] and _age(again) >= QUIET_SECONDS:
                ready.append(version)
        self._seen = seen
        return sorted(ready)


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
