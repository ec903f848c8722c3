"""The completion marker: written last by publish, it says a version is whole and what it holds.

A version in the bucket exists for sync only once `<model>/<version>/dynoserve-complete.json`
is there; the marker lists every file with its size and SHA-256 (S3 ETags are not content
hashes for multipart uploads) and the folders, so empty ones like `variables/` survive S3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from modelrepo import MARKER_NAME
from sync.errors import VersionError
from sync.files import sha256_file

MARKER_FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: path relative to the version folder, size, SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Marker:
    """What a complete version holds."""

    model: str
    version: int
    files: tuple[FileEntry, ...]
    directories: tuple[str, ...]
    published_at: str

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def same_content(self, other: Marker) -> bool:
        """Same files and folders (the publish time does not matter)."""
        return (self.files, self.directories) == (other.files, other.directories)

    def to_json(self) -> str:
        body = {
            "format": MARKER_FORMAT,
            "model": self.model,
            "version": self.version,
            "published_at": self.published_at,
            "directories": list(self.directories),
            "files": [vars(entry) for entry in self.files],
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def build_marker(model: str, version: int, folder: Path) -> Marker:
    """Describe a local version folder (hashing every file); the marker file itself is left out."""
    files: list[FileEntry] = []
    directories: list[str] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir():
            directories.append(rel)
        elif path.is_file() and rel != MARKER_NAME:
            files.append(FileEntry(rel, path.stat().st_size, sha256_file(path)))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return Marker(model, version, tuple(files), tuple(directories), stamp)


def parse_marker(text: str | bytes, model: str, version: int) -> Marker:
    """Parse and check a marker; raise VersionError saying what is wrong with it."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise VersionError(f"{model}/{version}: completion marker is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != MARKER_FORMAT:
        raise VersionError(f"{model}/{version}: completion marker has an unknown format")
    if body.get("model") != model or body.get("version") != version:
        raise VersionError(f"{model}/{version}: completion marker names another version")
    try:
        files = tuple(_file_entry(item) for item in body["files"])
        directories = tuple(_safe_path(str(item)) for item in body.get("directories", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise VersionError(f"{model}/{version}: completion marker is malformed: {exc}") from exc
    return Marker(model, version, files, directories, str(body.get("published_at", "")))


def read_local_marker(folder: Path, model: str, version: int) -> Marker | None:
    """The marker sync left in an installed version folder, or None if absent or unreadable."""
    try:
        return parse_marker((folder / MARKER_NAME).read_bytes(), model, version)
    except (OSError, VersionError):
        return None


def check_layout(marker: Marker) -> None:
    """A servable needs `saved_model.pb` and a `variables/` folder (docs/model-format.md)."""
    names = {entry.path for entry in marker.files}
    if "saved_model.pb" not in names:
        raise VersionError(f"{marker.model}/{marker.version}: no saved_model.pb")
    has_variables = "variables" in marker.directories or any(
        name.startswith("variables/") for name in names
    )
    if not has_variables:
        raise VersionError(f"{marker.model}/{marker.version}: no variables/ folder")


def _file_entry(item: Any) -> FileEntry:
    size, digest = int(item["size"]), str(item["sha256"])
    if size < 0 or len(digest) != 64:
        raise ValueError(f"bad size or sha256 for {item.get('path')!r}")
    return FileEntry(_safe_path(str(item["path"])), size, digest.lower())


def _safe_path(raw: str) -> str:
    # A marker comes from the bucket: never let it write outside the version folder.
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or not path.parts or raw == MARKER_NAME:
        raise ValueError(f"unsafe path {raw!r}")
    return path.as_posix()
