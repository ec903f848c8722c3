"""The local model repository as the exporter sees it: versions present, labels files."""

from __future__ import annotations

from pathlib import Path

from export.errors import InvalidLabels, InvalidVersion


def existing_versions(model_dir: Path) -> list[int]:
    """Integer-named version directories of one model, ascending (staging folders ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0
    )


def next_version(model_dir: Path) -> int:
    """One more than the highest version present, or 1."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def parse_version(text: str) -> int:
    """A version from the command line: a positive integer written in decimal digits."""
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise InvalidVersion(f"version must be a positive integer; got {text!r}")
    return int(value)


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
