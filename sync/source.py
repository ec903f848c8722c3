"""What every model source gives sync: a listing of complete versions and a way to fetch files.

Two sources implement it: `S3Source` (the bucket, sync/s3.py) and `LocalSource` (the export
folder, sync/local.py, used by `make run` when no bucket is configured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelrepo.manifest import ModelManifest
from sync.marker import FileEntry, Marker
from sync.progress import Progress


@dataclass
class Listing:
    """One look at the source."""

    complete: dict[str, dict[int, Marker]] = field(default_factory=dict)
    """Versions whose completion marker is present and consistent, by model."""
    manifests: dict[str, ModelManifest] = field(default_factory=dict)
    """Each model's manifest (the default one when the bucket has none); a model whose manifest
    is unreadable is missing here and keeps its current state."""
    problems: dict[str, str] = field(default_factory=dict)
    """`model` or `model/version` -> why it was left out (bad manifest, broken marker)."""
    incomplete: dict[str, list[int]] = field(default_factory=dict)
    """Versions with files but no completion marker yet (publish in progress), by model."""

    def is_empty(self) -> bool:
        return not any(self.complete.values())


class Source(Protocol):
    """A place published versions come from."""

    def describe(self) -> str:
        """Human-readable location, for logs."""
        ...

    def scan(self) -> Listing:
        """List models, complete versions and manifests; raise SourceUnavailable and friends."""
        ...

    def download(
        self, marker: Marker, entries: Sequence[FileEntry], staging: Path, progress: Progress
    ) -> None:
        """Fetch `entries` of the version `marker` describes into the `staging` folder."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
