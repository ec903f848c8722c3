"""Small filesystem helpers: atomic writes, and the file digest sync compares."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# One digest for the export record, the completion marker and the installer: they must agree.
from modelrepo.exportrecord import sha256_file

__all__ = ["atomic_write_text", "sha256_file"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def replace_text_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` atomically unless it already holds exactly that; True if written
    (a reader polling the file by mtime sees a change only when there is one)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    atomic_write_text(path, text)
    return True


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
