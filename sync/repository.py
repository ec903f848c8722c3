"""The local model repository: TF Serving's `<base>/<model>/<version>/` folders, changed atomically.

Every version arrives through a staging folder under `<base>/.staging/` (same filesystem, so
the final rename is atomic) and leaves the same way; TF Serving only looks at integer-named
folders, so it never sees a half-written or half-deleted version.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelrepo import is_model_name, parse_version
from sync.errors import AlreadyRunning
from sync.files import atomic_write_text
from sync.marker import MARKER_NAME, Marker, read_local_marker

log = logging.getLogger(__name__)


class Repository:
    """Installs, lists and removes versions under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.staging_root = base / ".staging"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold `<base>/.sync.lock`: a second sync would delete the first one's staging folders."""
        self.base.mkdir(parents=True, exist_ok=True)
        with (self.base / ".sync.lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyRunning(f"another sync process is using {self.base}") from None
            yield

    def version_dir(self, model: str, version: int) -> Path:
        return self.base / model / str(version)

    def clean_staging(self) -> int:
        """Remove what a killed run left in staging; return how many folders went."""
        if not self.staging_root.is_dir():
            return 0
        leftovers = list(self.staging_root.iterdir())
        for path in leftovers:
            _remove_tree(path)
        return len(leftovers)

    def installed(self) -> dict[str, dict[int, Marker]]:
        """Versions sync installed (they carry a local completion marker), by model."""
        found: dict[str, dict[int, Marker]] = {}
        if not self.base.is_dir():
            return found
        for model_dir in sorted(self.base.iterdir()):
            if not model_dir.is_dir() or not is_model_name(model_dir.name):
                continue
            for version_dir in model_dir.iterdir():
                version = parse_version(version_dir.name)
                if version is None:
                    continue
                marker = read_local_marker(version_dir, model_dir.name, version)
                if marker is not None:
                    found.setdefault(model_dir.name, {})[version] = marker
        return found

    def intact(self, marker: Marker) -> bool:
        """Cheap check (sizes only) that an installed version still has all its files."""
        folder = self.version_dir(marker.model, marker.version)
        try:
            return all((folder / e.path).stat().st_size == e.size for e in marker.files)
        except OSError:
            return False

    def new_staging(self, model: str, version: int) -> Path:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{model}-{version}-", dir=self.staging_root))

    def install(self, staging: Path, marker: Marker) -> None:
        """Move a verified staging folder into place, the local marker written first."""
        atomic_write_text(staging / MARKER_NAME, marker.to_json())
        target = self.version_dir(marker.model, marker.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # Repairing a damaged copy: swap it out first, as a rename cannot replace a folder.
            self._discard(target)
        os.replace(staging, target)

    def remove(self, model: str, version: int) -> None:
        """Delete an installed version: renamed out of sight first, then deleted."""
        target = self.version_dir(model, version)
        if target.exists():
            self._discard(target)

    def _discard(self, folder: Path) -> None:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.staging_root))
        os.replace(folder, trash / folder.name)
        _remove_tree(trash)


def discard_staging(staging: Path) -> None:
    """Remove a staging folder after a failed install."""
    _remove_tree(staging)


def _remove_tree(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
