"""Which version a request means: the resolver that caches GetModelMetadata, and, when the model
server knows none, the error that says why (an unknown model, version or label, or one still on
its way here) and lists what exists."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

from gateway.catalog import ModelCatalog
from gateway.client import ModelServerClient, VersionMetadata, VersionStatus
from gateway.errors import (
    GatewayError,
    LabelNotFound,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    VersionNotFound,
)
from gateway.syncstatus import served_versions

# How long "latest" or a label maps to the same version before we ask the server again.
ALIAS_TTL_S = 5.0
# TF Serving's ManagerState names for a version on its way to AVAILABLE.
LOADING_STATES = ("START", "LOADING")


class VersionResolver:
    """Caches GetModelMetadata: pinned versions for good, latest/labels for ALIAS_TTL_S."""

    def __init__(self, client: ModelServerClient, max_entries: int = 256) -> None:
        self.client = client
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, int], VersionMetadata] = OrderedDict()
        self._aliases: dict[tuple[str, str], tuple[float, int]] = {}

    def resolve(
        self,
        model: str,
        version: int | None,
        label: str | None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> VersionMetadata:
        if version is None:
            alias = (model, label or "")
            with self._lock:
                hit = self._aliases.get(alias)
                if hit is not None and time.monotonic() - hit[0] < ALIAS_TTL_S:
                    version = hit[1]
        if version is not None:
            with self._lock:
                cached = self._versions.get((model, version))
                if cached is not None:
                    self._versions.move_to_end((model, version))
                    return cached
        meta = self.client.metadata(
            model, version, None if version else label, request_id, timeout=timeout
        )
        self._store(meta, None if version else (model, label or ""))
        return meta

    def _store(self, meta: VersionMetadata, alias: tuple[str, str] | None) -> None:
        with self._lock:
            self._versions[(meta.model, meta.version)] = meta
            while len(self._versions) > self.max_entries:
                self._versions.popitem(last=False)
            if alias is not None:
                self._aliases[alias] = (time.monotonic(), meta.version)

    def forget(self, model: str) -> None:
        """Drop what we know of `model` (its versions changed under us)."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == model]:
                del self._versions[key]
            for alias in [a for a in self._aliases if a[0] == model]:
                del self._aliases[alias]


class NotFoundExplainer:
    """Turns the model server's NOT_FOUND into the error a client can act on: 404 for what does
    not exist, 503 (retry) for what is on its way; each message says what exists."""

    def __init__(
        self, client: ModelServerClient, catalog: ModelCatalog, sync_status_file: Path
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.sync_status_file = sync_status_file

    def not_found(self, model: str, version: int | None, label: str | None) -> GatewayError:
        """Tell apart an unknown model, version or label and one still loading; say what exists."""
        statuses = self._statuses(model)
        if label is not None and (statuses or model in self._known_models()):
            return self.label_error(model, label, statuses)
        if version is not None and self._coming(model, version, statuses):
            return ModelNotReady(
                f"model {model!r} version {version} is configured on this instance and not "
                "AVAILABLE yet (being loaded); retry shortly"
            )
        if statuses and version is not None:
            listed = ", ".join(
                f"{s.version} ({s.state})" for s in sorted(statuses, key=_by_version)
            )
            return VersionNotFound(f"model {model!r} has no version {version}; versions: {listed}")
        if statuses or model in self._known_models():
            return ModelNotReady(f"model {model!r} has no AVAILABLE version yet")
        if not self._known_models():
            # Booting: Heroku's router sends requests as soon as $PORT is bound.
            return ModelNotReady(
                "no model is configured on this instance yet (sync has not written "
                "models.config); retry shortly"
            )
        return self.model_not_found(model)

    def label_error(
        self, model: str, label: str, statuses: list[VersionStatus] | None = None
    ) -> GatewayError:
        """A label models.config names is only waiting for its version (503, retry); any other
        is unknown (404, listing the labels there are)."""
        entry = self.catalog.get(model)
        labels = entry.labels if entry is not None else {}
        if label not in labels:
            listed = ", ".join(f"{k} (v{v})" for k, v in sorted(labels.items())) or "none"
            return LabelNotFound(
                f"model {model!r} has no version labelled {label!r}; labels: {listed}"
            )
        version = labels[label]
        states = self._statuses(model) if statuses is None else statuses
        state = next((s.state for s in states if s.version == version), "not loaded")
        return ModelNotReady(
            f"label {label!r} of model {model!r} points at version {version}, which is not "
            f"AVAILABLE yet ({state}); retry shortly"
        )

    def model_not_found(self, model: str) -> ModelNotFound:
        names = ", ".join(sorted(self._known_models())) or "none configured"
        return ModelNotFound(f"no model named {model!r}; models: {names}")

    def _coming(self, model: str, version: int, statuses: list[VersionStatus]) -> bool:
        """The version is on its way here: sync installed it and wrote it into models.config
        (the model server loads it at its next poll), or the server is loading it. A version
        another instance may serve already is then a 503 here, not a 404 (README, scale-out)."""
        state = next((s.state for s in statuses if s.version == version), None)
        if state in LOADING_STATES:
            return True
        return state is None and version in served_versions(self.sync_status_file, model)

    def _known_models(self) -> set[str]:
        return set(self.catalog.entries())

    def _statuses(self, model: str) -> list[VersionStatus]:
        try:
            return self.client.status(model)
        except NotFound:
            return []


def _by_version(status: VersionStatus) -> int:
    return status.version
