"""The export record: what `make export` wrote and verified, file by file (size and SHA-256).

Export writes it into the version folder once the export has been reloaded and checked, so
`make publish` can prove the files it uploads are the ones that were verified (a variables file
truncated or a graph replaced since then is refused). Standard library only: export writes it,
sync reads it, and neither may pull in the other's dependencies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from modelrepo import MARKER_NAME

RECORD_NAME = "assets.extra/dynoserve-files.json"
"""Where the record lives in a version folder (TF Serving ignores assets.extra but warmup)."""
RECORD_FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExportRecord:
    """Each file of a version as export left it: path -> (size, SHA-256)."""

    files: dict[str, tuple[int, str]]
    verified: bool
    """True when export reloaded the version and compared it with its source."""

    def to_json(self) -> str:
        files = [{"path": p, "size": s, "sha256": h} for p, (s, h) in sorted(self.files.items())]
        body = {"format": RECORD_FORMAT, "verified": self.verified, "files": files}
        return json.dumps(body, indent=2) + "\n"

    def differences(self, other: ExportRecord) -> list[str]:
        """What differs in `other` (the folder now) from this record, one phrase per file."""
        found = []
        for path, (size, digest) in sorted(self.files.items()):
            now = other.files.get(path)
            if now is None:
                found.append(f"{path} is missing")
            elif now[0] != size:
                found.append(f"{path} has {now[0]} bytes, export wrote {size}")
            elif now[1] != digest:
                found.append(f"{path} changed since the export (SHA-256 differs)")
        found += [
            f"{path} was added after the export"
            for path in sorted(other.files.keys() - self.files.keys())
        ]
        return found


def describe_folder(folder: Path, verified: bool) -> ExportRecord:
    """Hash every file of a version folder (the record and the completion marker left out)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in (RECORD_NAME, MARKER_NAME):
            files[rel] = (path.stat().st_size, sha256_file(path))
    return ExportRecord(files, verified)


def write_record(folder: Path, verified: bool) -> ExportRecord:
    """Record the folder as it is now; call it after verification, before it is moved in place."""
    record = describe_folder(folder, verified)
    target = folder / RECORD_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(record.to_json(), encoding="utf-8")
    return record


def read_record(folder: Path) -> ExportRecord | None:
    """The folder's record; None when there is none. ValueError when it does not parse."""
    try:
        text = (folder / RECORD_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    body = json.loads(text)
    if not isinstance(body, dict) or body.get("format") != RECORD_FORMAT:
        raise ValueError(f"{RECORD_NAME} has an unknown format")
    try:
        files = {str(f["path"]): (int(f["size"]), str(f["sha256"])) for f in body["files"]}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{RECORD_NAME} is malformed: {exc}") from exc
    return ExportRecord(files, body.get("verified") is True)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so big variables files stay out of memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
