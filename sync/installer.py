"""Brings one version from a source into the local repository: reuse, fetch, verify, rename."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sync.errors import ChecksumMismatch, VersionError
from sync.files import sha256_file
from sync.marker import FileEntry, Marker, check_layout
from sync.progress import Progress
from sync.repository import Repository, discard_staging
from sync.source import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallResult:
    """What installing one version took."""

    fetched_bytes: int
    fetched_files: int
    reused_files: int
    seconds: float


class Installer:
    """Installs versions; files already on disk with the right SHA-256 are linked, not fetched."""

    def __init__(self, source: Source, repository: Repository, retries: int) -> None:
        self.source, self.repository, self.retries = source, repository, retries

    def install(self, marker: Marker, local: Mapping[int, Marker]) -> InstallResult:
        """Install `marker`'s version; `local` is what this model has on disk already."""
        check_layout(marker)
        what = f"{marker.model}/{marker.version}"
        try:
            staging = self.repository.new_staging(marker.model, marker.version)
        except OSError as exc:
            raise VersionError(f"{what}: cannot create a staging folder: {exc}") from exc
        try:
            result = self._fill(staging, marker, local)
            self.repository.install(staging, marker)
        except OSError as exc:
            discard_staging(staging)
            raise VersionError(f"{what}: writing to {staging.parent} failed: {exc}") from exc
        except BaseException:
            # Killed or failed: nothing partial ever reaches the version folder.
            discard_staging(staging)
            raise
        return result

    def _fill(self, staging: Path, marker: Marker, local: Mapping[int, Marker]) -> InstallResult:
        reused = self._reuse(staging, marker, local)
        missing = [entry for entry in marker.files if entry.path not in reused]
        what = f"{marker.model}/{marker.version}"
        progress = Progress(what, sum(e.size for e in missing), log)
        self._fetch_verified(staging, marker, missing, progress)
        for directory in marker.directories:
            (staging / directory).mkdir(parents=True, exist_ok=True)
        seconds = progress.finish(f"{len(missing)} files fetched, {len(reused)} reused")
        return InstallResult(progress.done, len(missing), len(reused), seconds)

    def _reuse(self, staging: Path, marker: Marker, local: Mapping[int, Marker]) -> set[str]:
        """Link files whose content is already installed (same SHA-256) into staging."""
        by_digest: dict[str, Path] = {}
        for other in local.values():
            folder = self.repository.version_dir(other.model, other.version)
            for entry in other.files:
                by_digest.setdefault(entry.sha256, folder / entry.path)
        reused: set[str] = set()
        for entry in marker.files:
            source = by_digest.get(entry.sha256)
            if source is not None and _matches(source, entry):
                _link_or_copy(source, staging / entry.path)
                reused.add(entry.path)
        return reused

    def _fetch_verified(
        self, staging: Path, marker: Marker, entries: Sequence[FileEntry], progress: Progress
    ) -> None:
        pending = list(entries)
        for attempt in range(self.retries + 1):
            if not pending:
                return
            self.source.download(marker, pending, staging, progress)
            pending = [entry for entry in pending if not _matches(staging / entry.path, entry)]
            if pending and attempt < self.retries:
                log.warning(
                    "%s/%s: checksum mismatch on %s; fetching again (attempt %d of %d)",
                    marker.model, marker.version, ", ".join(e.path for e in pending),
                    attempt + 2, self.retries + 1,
                )  # fmt: skip
        if pending:
            names = ", ".join(entry.path for entry in pending)
            raise ChecksumMismatch(
                f"{marker.model}/{marker.version}: SHA-256 of {names} does not match the "
                f"completion marker after {self.retries + 1} attempts"
            )


def _matches(path: Path, entry: FileEntry) -> bool:
    try:
        return path.stat().st_size == entry.size and sha256_file(path) == entry.sha256
    except OSError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
