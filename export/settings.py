"""The export CLI's settings, read once from the environment in main()."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXPORT_DIR = "exports"


@dataclass(frozen=True)
class ExportSettings:
    """Where exports go unless the command line says otherwise."""

    export_dir: Path
    """Local model repository written into (DYNOSERVE_EXPORT_DIR; default `exports`)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ExportSettings:
        env = os.environ if environ is None else environ
        return cls(export_dir=Path(env.get("DYNOSERVE_EXPORT_DIR") or DEFAULT_EXPORT_DIR))
