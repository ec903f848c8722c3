"""Which models the gateway serves: the configured list, or the model server's models.config.

TF Serving has no "list models" call, so names and version labels come from the same
models.config file the model server loads (re-read when it changes; sync rewrites it).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from modelrepo.modelconfig import read_model_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogEntry:
    """A model the gateway knows about, with its version labels (label -> version)."""

    name: str
    labels: dict[str, int] = field(default_factory=dict)


class ModelCatalog:
    """Thread-safe view of the configured models; cheap to call on every request."""

    def __init__(self, models: tuple[str, ...], config_file: Path | None) -> None:
        self.models = models
        self.config_file = config_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._parsed: dict[str, CatalogEntry] = {}

    def entries(self) -> dict[str, CatalogEntry]:
        """Configured models by name; the explicit list wins over the file for names."""
        from_file = self._from_file()
        if not self.models:
            return from_file
        return {name: from_file.get(name, CatalogEntry(name)) for name in self.models}

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries().get(name)

    def _from_file(self) -> dict[str, CatalogEntry]:
        path = self.config_file
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        if path is None or stat is None:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._parsed = parse_model_config(path.read_text())
                except OSError as exc:  # replaced between stat and read: keep what we had
                    log.warning("cannot read %s: %s", path, exc)
                    return dict(self._parsed)
                self._stamp = stamp
            return dict(self._parsed)


def parse_model_config(text: str) -> dict[str, CatalogEntry]:
    """Model names and labels from a models.config text proto; an unreadable file lists none."""
    return {
        c.name: CatalogEntry(c.name, dict(sorted(c.version_labels.items())))
        for c in read_model_config(text).model_config_list.config
        if c.name
    }
