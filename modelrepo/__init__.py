"""The model repository's contract (docs/model-format.md), in one place every process imports.

`modelrepo` is the contracts package: every file one process writes and another reads has its
schema, writer and reader here (docs/layers.md lists them), and it imports no other package of
the project. Standard library only, but for protobuf in `modelconfig.py` (models.config is a
protobuf text file): the gateway imports it, and must not pull TensorFlow or boto3 in.

Versions. TF Serving reads a version directory's name with `absl::SimpleAtoi`
(tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc, ParseVersionNumber;
`strings::safe_strto64` before): a decimal int64, so "01" is version 1 to it, like "1". This
project follows that reading (`read_version`, positive numbers only, as docs/model-format.md
says) and writes, copies and publishes only the canonical name `str(version)`
(`parse_version`), so a folder the model server would read as a number it also finds where sync
put it: sync builds every key and path from the number, and a "01" beside a "1" would be one
version to TF Serving under two names.
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
"""A model name is one safe path segment, locally and in S3: 1-128 letters, digits, '_', '.'
or '-', starting with a letter or digit."""
MODEL_NAME_RULE = "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"

LABEL_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
"""A version label (stable, canary): 1-64 letters, digits, '_', '.' or '-', starting with a
letter or '_', so no label reads as a version number."""
LABEL_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or '_'"

MAX_VERSION = 2**63 - 1
"""TF Serving's versions are int64."""

DEFAULT_BASE_PATH = Path("var/models")
"""The model server's base path for `make run` (DYNOSERVE_MODEL_BASE_PATH; /models in Docker)."""
DEFAULT_EXPORT_DIR = Path("exports")
"""Where `make export` writes, and sync's source without a bucket (DYNOSERVE_EXPORT_DIR)."""
CONFIG_FILE = "models.config"
"""The ModelServerConfig text file sync writes under the base path for the model server."""
STATUS_FILE = "sync-status.json"
"""Sync's status file under the base path, read by the gateway (schema in docs/sync.md)."""
MARKER_NAME = "dynoserve-complete.json"
"""Completion marker in a version folder, written last: the version is whole (docs/sync.md)."""
MANIFEST_NAME = "dynoserve-model.json"
"""A model's version policy and labels, beside its version folders (docs/sync.md)."""


def is_model_name(name: object) -> bool:
    """True for a name that may become a model directory (see MODEL_NAME_PATTERN)."""
    return isinstance(name, str) and MODEL_NAME_PATTERN.fullmatch(name) is not None


def is_label(name: object) -> bool:
    """True for a version label sync writes and the gateway accepts (see LABEL_PATTERN)."""
    return isinstance(name, str) and LABEL_PATTERN.fullmatch(name) is not None


def read_version(text: str) -> int | None:
    """The version TF Serving reads from a directory name ("01" is 1), or None for a name it
    skips or a number that is not a positive version."""
    digits = text.strip()
    if digits.startswith("+"):
        digits = digits[1:]
    if not digits.isascii() or not digits.isdigit():
        return None
    value = int(digits)
    return value if 0 < value <= MAX_VERSION else None


def parse_version(name: str) -> int | None:
    """The version of a folder this project writes and copies: the canonical `str(version)`
    only, so "01" (version 1 to TF Serving, see `read_version`) is not one."""
    value = read_version(name)
    return value if value is not None and version_dir(value) == name else None


def version_dir(version: int) -> str:
    """The folder name of a version: its decimal number, no leading zeros."""
    return str(version)


def config_file(base_path: Path) -> Path:
    """models.config under a base path."""
    return base_path / CONFIG_FILE


def status_file(base_path: Path) -> Path:
    """sync-status.json under a base path."""
    return base_path / STATUS_FILE
