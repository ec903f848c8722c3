"""The export folder as a model source, for `make run` and machines without a bucket.

`make export` writes each version atomically (staging folder, then rename), so a version
folder with a `saved_model.pb` is complete; its marker is computed here by hashing, and cached
by file sizes and modification times so an idle watch pass hashes nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from modelrepo import MANIFEST_NAME, is_model_name, parse_version
from modelrepo.manifest import DEFAULT_MANIFEST, ManifestError, ModelManifest, parse_manifest
from sync.errors import SourceError
from sync.marker import MARKER_NAME, FileEntry, Marker, build_marker
from sync.progress import Progress
from sync.source import Listing

_Fingerprint = tuple[tuple[str, int, int], ...]


class LocalSource:
    """Models under `<export_dir>/<model>/<version>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._markers: dict[tuple[str, int], tuple[_Fingerprint, Marker]] = {}

    def describe(self) -> str:
        return f"local folder {self.root}"

    def close(self) -> None:
        pass

    def scan(self) -> Listing:
        listing = Listing()
        if not self.root.is_dir():
            return listing
        try:
            for model_dir in sorted(self.root.iterdir()):
                if model_dir.is_dir() and is_model_name(model_dir.name):
                    self._scan_model(model_dir, listing)
        except OSError as exc:
            raise SourceError(f"reading {self.root}: {exc}") from exc
        return listing

    def _scan_model(self, model_dir: Path, listing: Listing) -> None:
        model = model_dir.name
        manifest = self._manifest(model_dir, listing)
        if manifest is not None:
            listing.manifests[model] = manifest
        listing.complete[model] = {}
        for version_dir in sorted(model_dir.iterdir()):
            version = parse_version(version_dir.name)
            if version is None or not version_dir.is_dir():
                continue
            if not (version_dir / "saved_model.pb").is_file():
                listing.incomplete.setdefault(model, []).append(version)
                continue
            listing.complete[model][version] = self._marker(model, version, version_dir)

    def _manifest(self, model_dir: Path, listing: Listing) -> ModelManifest | None:
        path = model_dir / MANIFEST_NAME
        if not path.is_file():
            return DEFAULT_MANIFEST
        try:
            return parse_manifest(path.read_bytes(), model_dir.name)
        except ManifestError as exc:
            listing.problems[model_dir.name] = str(exc)
            return None

    def _marker(self, model: str, version: int, folder: Path) -> Marker:
        fingerprint = _fingerprint(folder)
        cached = self._markers.get((model, version))
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        marker = build_marker(model, version, folder)
        self._markers[(model, version)] = (fingerprint, marker)
        return marker

    def download(
        self, marker: Marker, entries: Sequence[FileEntry], staging: Path, progress: Progress
    ) -> None:
        folder = self.root / marker.model / str(marker.version)
        try:
            for entry in entries:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / entry.path, target)
                progress.add(entry.size)
        except OSError as exc:
            raise SourceError(f"copying {marker.model}/{marker.version}: {exc}") from exc


def _fingerprint(folder: Path) -> _Fingerprint:
    entries = []
    for path in folder.rglob("*"):
        if path.is_file() and path.name != MARKER_NAME:
            stat = path.stat()
            entries.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))
