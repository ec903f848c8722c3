"""Which version a request means: the resolver that caches GetModelMetadata, and, when the model
server knows none, the error that says why (an unknown model, version or label, or one still on
its way here) and lists what exists."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.catalog import ModelCatalog
from gateway.client import ModelServerClient, VersionMetadata, VersionStatus
from gateway.errors import (
    GatewayError,
    InvalidArgument,
    LabelNotFound,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    VersionNotFound,
)
from gateway.interface import LabelMove
from gateway.metrics import Metrics
from gateway.rollouts import RolloutTable
from gateway.syncstatus import served_versions
from modelrepo.rollouts import client_bucket, pick, random_bucket

log = logging.getLogger(__name__)

# How long "latest" or a label maps to the same version before we ask the server again (a label
# is asked again at once when models.config moves it).
ALIAS_TTL_S = 5.0
# How long a label the model server still maps elsewhere than models.config (a move pending: the
# server applies models.config at its next poll) keeps its answer before we ask again.
PENDING_TTL_S = 0.5
# TF Serving's ManagerState names for a version on its way to AVAILABLE.
LOADING_STATES = ("START", "LOADING")
# The route (metric label) of requests that name no label: empty, as no label can be.
DEFAULT_ROUTE = ""


class VersionResolver:
    """Caches GetModelMetadata: pinned versions for good, latest/labels for ALIAS_TTL_S.

    With a catalog (models.config), a label's cached version holds only while models.config
    still names the target it named when cached: a label move is asked of the model server at
    once. Until the server has applied the move (its next config poll) it answers from the
    previous target; that answer is kept PENDING_TTL_S only (pending_moves reports it).

    With a rollout table, a request without a version follows its route's weights (the
    label's, or the model's for an unpinned request): its client key's bucket, or a random
    one, picks a version (modelrepo/rollouts.py). A picked version the model server does not
    have (not loaded yet, failed, unloaded) is skipped for ALIAS_TTL_S and the bucket goes to
    the other weighted versions in proportion; with none of them left the request is answered
    as without weights (the label's version, or the latest), never refused for it.
    """

    def __init__(
        self,
        client: ModelServerClient,
        max_entries: int = 256,
        rollouts: RolloutTable | None = None,
        metrics: Metrics | None = None,
        catalog: ModelCatalog | None = None,
    ) -> None:
        self.client = client
        self.max_entries = max_entries
        self.rollouts = rollouts
        self.metrics = metrics
        self.catalog = catalog
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, int], VersionMetadata] = OrderedDict()
        self._aliases: dict[tuple[str, str], _Alias] = {}
        self._missing: dict[tuple[str, int], float] = {}
        """Weighted versions the model server did not have, and when that was seen."""

    def resolve(
        self,
        model: str,
        version: int | None,
        label: str | None,
        request_id: str = "",
        timeout: float | None = None,
        client_key: str | None = None,
        weighted: bool = False,
    ) -> VersionMetadata:
        """The version a request means. `weighted`: follow the rollout weights (requests to
        predict; a description of the model does not draw)."""
        if version is None and weighted and self.rollouts is not None:
            split = self.rollouts.split(model, label)
            if split:
                picked = self._weighted(model, label, split, client_key, request_id, timeout)
                if picked is not None:
                    return picked
        target = self._configured(model, label)
        if version is None:
            alias = (model, label or "")
            with self._lock:
                hit = self._aliases.get(alias)
                if hit is not None and time.monotonic() < hit.expires and hit.target == target:
                    version = hit.version
        if version is not None:
            with self._lock:
                cached = self._versions.get((model, version))
                if cached is not None:
                    self._versions.move_to_end((model, version))
                    return cached
        meta = self.client.metadata(
            model, version, None if version else label, request_id, timeout=timeout
        )
        self._store(meta, None if version else (model, label or ""), target)
        return meta

    def pending_moves(self, model: str, request_id: str = "") -> dict[str, LabelMove]:
        """Labels models.config has moved that the model server does not answer from the new
        target yet: label -> (the version `?label=` is answered from now, None: none, and the
        target). Empty without a catalog or once every move is applied."""
        entry = self.catalog.get(model) if self.catalog is not None else None
        moves: dict[str, LabelMove] = {}
        for label, target in (entry.labels if entry is not None else {}).items():
            try:
                serving: int | None = self.resolve(model, None, label, request_id).version
            except (NotFound, InvalidArgument):  # the server knows no such label (yet)
                serving = None
            if serving != target:
                moves[label] = LabelMove(serving, target)
        return moves

    def _configured(self, model: str, label: str | None) -> int | None:
        """The version models.config points `label` at (None: no label, catalog or entry)."""
        if label is None or self.catalog is None:
            return None
        entry = self.catalog.get(model)
        return None if entry is None else entry.labels.get(label)

    def _weighted(
        self,
        model: str,
        label: str | None,
        split: Mapping[int, int],
        client_key: str | None,
        request_id: str,
        timeout: float | None,
    ) -> VersionMetadata | None:
        """The version the request's bucket picks among those the model server has; None when
        it has none of the weighted versions."""
        bucket = random_bucket() if client_key is None else client_bucket(model, client_key)
        route, draw = label or DEFAULT_ROUTE, "random" if client_key is None else "key"
        wanted = pick(split, bucket)
        skipped = self._missing_now(model)
        chosen = pick(split, bucket, skipped)
        while chosen is not None:
            try:
                meta = self.resolve(model, chosen, None, request_id, timeout)
            except NotFound:
                with self._lock:
                    self._missing[(model, chosen)] = time.monotonic()
                skipped |= {chosen}
                chosen = pick(split, bucket, skipped)
                continue
            self._count(model, route, meta.version, draw, wanted)
            return meta
        self._count(model, route, None, draw, wanted)
        return None

    def _missing_now(self, model: str) -> frozenset[int]:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, at in self._missing.items() if now - at >= ALIAS_TTL_S]:
                del self._missing[key]
            return frozenset(v for m, v in self._missing if m == model)

    def _count(
        self, model: str, route: str, version: int | None, draw: str, wanted: int | None
    ) -> None:
        """Metrics and a log line for a fallback: the picked version was not available here."""
        if version != wanted:
            served = "unweighted" if version is None else str(version)
            log.warning(
                "rollout of %s (%s): version %s not available here; answered by %s",
                model, f"label {route}" if route else "unpinned", wanted, served,
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.rollout_fallbacks.labels(model, route, str(wanted), served).inc()
        if self.metrics is not None and version is not None:
            self.metrics.rollout_assignments.labels(model, route, str(version), draw).inc()

    def _store(
        self, meta: VersionMetadata, alias: tuple[str, str] | None, target: int | None
    ) -> None:
        with self._lock:
            self._versions[(meta.model, meta.version)] = meta
            while len(self._versions) > self.max_entries:
                self._versions.popitem(last=False)
            if alias is not None:
                pending = target is not None and meta.version != target
                ttl = PENDING_TTL_S if pending else ALIAS_TTL_S
                self._aliases[alias] = _Alias(time.monotonic() + ttl, meta.version, target)

    def forget(self, model: str) -> None:
        """Drop what we know of `model` (its versions changed under us)."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == model]:
                del self._versions[key]
            for alias in [a for a in self._aliases if a[0] == model]:
                del self._aliases[alias]
            for key in [k for k in self._missing if k[0] == model]:
                del self._missing[key]


@dataclass(frozen=True)
class _Alias:
    """A cached answer for "latest" or a label: until when, which version, and the version
    models.config named for the label then (None: latest, or no catalog)."""

    expires: float
    version: int
    target: int | None


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
