"""The local model repository as the exporter sees it: versions present, labels files."""

from __future__ import annotations

from pathlib import Path

from export.errors import InvalidLabels, InvalidVersion
from modelrepo import read_version


def existing_versions(model_dir: Path) -> list[int]:
    """Versions of one model as TF Serving reads its directory names ("01" is 1), ascending;
    staging folders are ignored."""
    if not model_dir.is_dir():
        return []
    found = (read_version(child.name) for child in model_dir.iterdir() if child.is_dir())
    return sorted(version for version in found if version is not None)


def next_version(model_dir: Path) -> int:
    """One more than the highest version present, or 1."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def parse_version(text: str) -> int:
    """A version from the command line: a positive integer written in decimal digits."""
    value = read_version(text)
    if value is None:
        raise InvalidVersion(f"version must be a positive integer; got {text!r}")
    return value


def read_labels_file(path: Path) -> list[str]:
    """One label per line; surrounding whitespace and trailing blank lines are dropped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidLabels(f"labels file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidLabels(f"labels file {path} is not readable UTF-8 text: {exc}") from exc
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    return labels
