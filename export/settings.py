"""The export CLI's settings, read once from the environment in main()."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envsettings import EnvSettings, env
from modelrepo import DEFAULT_EXPORT_DIR


@dataclass(frozen=True)
class ExportSettings(EnvSettings):
    """Where exports go unless the command line says otherwise."""

    export_dir: Path = env("DYNOSERVE_EXPORT_DIR", DEFAULT_EXPORT_DIR)
    """Local model repository written into."""
