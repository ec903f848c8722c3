"""Model lifecycle as TF Serving's ServerCore + AspiredVersionsManager run it.

The config names models; each poll, the version policy picks the aspired versions on disk; new
versions load (with warmup) before old ones unload (AvailabilityPreservingPolicy); every version's
state and last error stay queryable, as ServableStateMonitor keeps them, END included.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.local.config import validate_model_server_config
from serving.local.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
    Unknown,
)
from serving.local.loaded import LoadedVersion
from serving.local.source import VersionScanner, aspired_versions

log = logging.getLogger("serving.manager")

Loader = Callable[[str, int, Path], LoadedVersion]


class State(enum.StrEnum):
    """ModelVersionStatus.State names."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class VersionRecord:
    """A version's state, its last error, and the loaded servable while AVAILABLE."""

    state: State
    error: ServingError | None = None
    loaded: LoadedVersion | None = None


@dataclass
class ModelRecord:
    """A model: its current config entry (None once removed) and all versions ever seen."""

    config: Any | None
    scanner: VersionScanner | None = None
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class ManagerOptions:
    """Lifecycle knobs taken from the TF Serving flags."""

    allow_labels_for_unavailable: bool = False
    """--allow_version_labels_for_unavailable_models."""
    max_load_retries: int = 5
    """--max_num_load_retries."""
    load_retry_interval: float = 60.0
    """--load_retry_interval_micros, in seconds."""


def servable_id(name: str, version: int) -> str:
    """ServableId::DebugString."""
    return f"{{name: {name} version: {version}}}"


class ModelManager:
    """Applies configs, polls base paths, loads and unloads versions, answers lookups."""

    def __init__(self, loader: Loader, options: ManagerOptions) -> None:
        self._loader = loader
        self._options = options
        self._models: dict[str, ModelRecord] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._config: Any | None = None
        self._state_lock = threading.Lock()
        self._changed = threading.Condition(self._state_lock)
        self._work_lock = threading.RLock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- configuration -------------------------------------------------------------------
    def apply_config(self, config: Any) -> None:
        """ReloadConfig: labels, then models; blocks until new models are AVAILABLE."""
        with self._work_lock:
            if self._config is not None and config == self._config:
                return
            if self._config is not None and config.WhichOneof("config") != "model_config_list":
                raise FailedPrecondition(
                    "Cannot transition to requested config. It is only legal to transition "
                    "from one ModelConfigList to another."
                )
            validate_model_server_config(config)
            if config.WhichOneof("config") is None:
                log.info("Taking no action for empty config.")
                return
            self._update_labels(config)
            new_models = self._install(config)
            self._config = config
            log.info("Adding/updating models.")
            self._reconcile_all()
        self._wait_available(new_models)
        log.info("Finished adding/updating models")

    def _update_labels(self, config: Any) -> None:
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            for label, version in model.version_labels.items():
                if not self._label_allowed(model.name, label, version):
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference"
                    )
                labels.setdefault(model.name, {})[label] = version
        with self._state_lock:
            self._labels = labels

    def _label_allowed(self, name: str, label: str, version: int) -> bool:
        with self._state_lock:
            if self._options.allow_labels_for_unavailable:
                existing = self._labels.get(name, {}).get(label)
                if existing is None or existing == version:
                    return True
            record = self._models.get(name)
            current = record.versions.get(version) if record else None
            return current is not None and current.state is State.AVAILABLE

    def _install(self, config: Any) -> set[str]:
        new_models: set[str] = set()
        wanted = {model.name: model for model in config.model_config_list.config}
        with self._state_lock:
            for name, model in wanted.items():
                record = self._models.setdefault(name, ModelRecord(config=None))
                if record.config is None:
                    new_models.add(name)
                    record.failed.clear()
                    log.info(" (Re-)adding model: %s", name)
                if record.config is None or record.config.base_path != model.base_path:
                    record.scanner = VersionScanner(name, model.base_path)
                record.config = model
            for name, record in self._models.items():
                if name not in wanted and record.config is not None:
                    log.info("Removing model: %s", name)
                    record.config = None
        return new_models

    def _wait_available(self, names: set[str]) -> None:
        pending = set(names)
        with self._changed:
            while pending and not self._stopping.is_set():
                failures = []
                for name in sorted(pending):
                    done, failure = self._settled(self._models[name])
                    if done:
                        pending.discard(name)
                    if failure:
                        failures.append(failure)
                if failures:
                    raise Unknown(
                        f"{len(failures)} model(s) did not become available: {{"
                        + "".join(f"{{{f}}}, " for f in failures)
                        + "}"
                    )
                if pending:
                    self._changed.wait(0.5)

    def _settled(self, record: ModelRecord) -> tuple[bool, str | None]:
        states = record.versions
        if any(r.state is State.AVAILABLE for r in states.values()):
            return True, None
        if record.failed and all(r.state is State.END for r in states.values()):
            version = max(record.failed)
            error = states[version].error
            name = record.config.name if record.config is not None else "?"
            return True, f"{servable_id(name, version)} due to error: {error}"
        return False, None

    # ---- polling ---------------------------------------------------------------------------
    def start_polling(self, interval_seconds: float) -> None:
        """Re-scan every base path every interval (TF Serving's file_system_poll_wait_seconds)."""
        if interval_seconds <= 0:
            return
        self._poller = threading.Thread(
            target=self._poll_loop, args=(interval_seconds,), name="fs-poll", daemon=True
        )
        self._poller.start()

    def _poll_loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            with self._work_lock:
                if self._stopping.is_set():
                    return
                self._reconcile_all()

    def _reconcile_all(self) -> None:
        with self._state_lock:
            records = list(self._models.items())
        for name, record in records:
            try:
                self._reconcile(name, record)
            except Exception:  # one model's trouble must not stop the others' polling
                log.exception("reconciling model %s failed", name)

    def _reconcile(self, name: str, record: ModelRecord) -> None:
        if record.config is None or record.scanner is None:
            aspired: list[int] = []
        else:
            found = record.scanner.scan()
            if found is None:
                return
            aspired = aspired_versions(record.config.model_version_policy, found)
        record.failed &= set(aspired)
        for version in sorted(aspired, reverse=True):
            if self._stopping.is_set():
                return
            current = record.versions.get(version)
            if version not in record.failed and (current is None or current.state is State.END):
                self._load(name, record, version)
        self._unload_unaspired(name, record, set(aspired))

    # ---- load / unload -------------------------------------------------------------------
    def _set(self, record: ModelRecord, version: int, new: VersionRecord) -> None:
        with self._changed:
            record.versions[version] = new
            self._changed.notify_all()

    def _load(self, name: str, record: ModelRecord, version: int) -> None:
        assert record.config is not None
        path = Path(record.config.base_path) / str(version)
        sid = servable_id(name, version)
        self._set(record, version, VersionRecord(State.START))
        log.info("Approving load for servable version %s", sid)
        self._set(record, version, VersionRecord(State.LOADING))
        log.info("Loading servable version %s", sid)
        loaded, error = self._load_with_retries(name, version, path)
        if loaded is None:
            record.failed.add(version)
            self._set(record, version, VersionRecord(State.END, error=error))
            return
        self._set(record, version, VersionRecord(State.AVAILABLE, loaded=loaded))
        log.info("Successfully loaded servable version %s", sid)

    def _load_with_retries(
        self, name: str, version: int, path: Path
    ) -> tuple[LoadedVersion | None, ServingError | None]:
        error: ServingError | None = None
        sid = servable_id(name, version)
        for attempt in range(1 + max(self._options.max_load_retries, 0)):
            if attempt:
                log.info("Retrying load on servable version %s retry: %d", sid, attempt)
            try:
                return self._loader(name, version, path), None
            except ServingError as exc:
                error = exc
            except Exception as exc:  # anything a broken SavedModel throws is a load failure
                error = Unknown(f"{type(exc).__name__}: {exc}")
            log.error("Loading servable: %s failed: %s", sid, error)
            if attempt < self._options.max_load_retries and self._stopping.wait(
                self._options.load_retry_interval
            ):
                break
        return None, error

    def _unload_unaspired(self, name: str, record: ModelRecord, aspired: set[int]) -> None:
        while True:
            with self._state_lock:
                serving = {v for v, r in record.versions.items() if r.state is State.AVAILABLE}
            unaspired = sorted(serving - aspired)
            if not unaspired:
                return
            if aspired and not (serving & aspired) and len(unaspired) == 1:
                return  # keep the only serving version until an aspired one is AVAILABLE
            self._unload(name, record, unaspired[0])

    def _unload(self, name: str, record: ModelRecord, version: int) -> None:
        sid = servable_id(name, version)
        loaded = record.versions[version].loaded
        self._set(record, version, VersionRecord(State.UNLOADING))
        log.info("Unloading servable version %s", sid)
        if loaded is not None:
            loaded.close()
        self._set(record, version, VersionRecord(State.END))
        log.info("Done unloading servable version %s", sid)

    def request_stop(self) -> None:
        """Make waits and retry sleeps give up; stop() does the unloading."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()

    def stop(self) -> None:
        """Stop polling and unload everything (queued batches finish first)."""
        self.request_stop()
        if self._poller is not None:
            self._poller.join()
        with self._work_lock:
            for name, record in list(self._models.items()):
                for version, current in sorted(record.versions.items()):
                    if current.state is State.AVAILABLE:
                        self._unload(name, record, version)

    # ---- lookups ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self, model_spec: Any) -> Iterator[LoadedVersion]:
        """The version a ModelSpec asks for, kept loaded until the block ends (a handle)."""
        loaded = self.handle(model_spec)
        try:
            yield loaded
        finally:
            loaded.release()

    def handle(self, model_spec: Any) -> LoadedVersion:
        """The acquired version a ModelSpec asks for; NOT_FOUND / INVALID_ARGUMENT as TF Serving.

        The caller must release() it; unloading waits for that.
        """
        name = model_spec.name
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        with self._state_lock:
            if choice == "version_label":
                label = model_spec.version_label
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
                return self._specific(name, version)
            if choice == "version":
                return self._specific(name, model_spec.version.value)
            return self._latest(name)

    def _specific(self, name: str, version: int) -> LoadedVersion:
        record = self._models.get(name)
        current = record.versions.get(version) if record else None
        if current is None or current.state is not State.AVAILABLE or current.loaded is None:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        return current.loaded.acquire()

    def _latest(self, name: str) -> LoadedVersion:
        record = self._models.get(name)
        serving = [
            v for v, r in (record.versions.items() if record else ()) if r.state is State.AVAILABLE
        ]
        if not serving or record is None:
            raise NotFound(f"Servable not found for request: Latest({name})")
        loaded = record.versions[max(serving)].loaded
        assert loaded is not None
        return loaded.acquire()

    def status(self, name: str, version: int | None) -> list[tuple[int, VersionRecord]]:
        """(version, record) newest first, as GetModelStatusImpl reports them."""
        with self._state_lock:
            record = self._models.get(name)
            versions = dict(record.versions) if record else {}
        if version is not None:
            if version not in versions:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [(version, versions[version])]
        if not versions:
            raise NotFound(f"Could not find any versions of model {name}")
        return sorted(versions.items(), reverse=True)

    def model_names(self) -> list[str]:
        with self._state_lock:
            return sorted(n for n, r in self._models.items() if r.config is not None)
