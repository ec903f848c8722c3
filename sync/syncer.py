"""One sync pass, the boot sequence and the watch loop: source, staging, repository, config."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelrepo.modelconfig import ServedModel, read_previous, render
from modelrepo.rollouts import ModelRollout
from modelrepo.syncstatus import ModelStatus
from sync.errors import SyncError
from sync.files import replace_text_if_changed
from sync.installer import Installer
from sync.marker import Marker
from sync.planner import ModelInputs, ModelPlan, plan_model, wanted_versions
from sync.repository import Repository
from sync.rollouts import write_rollouts
from sync.server_status import ServerStatus, VersionState
from sync.settings import Settings
from sync.source import Listing, Source
from sync.status import StatusBook

log = logging.getLogger(__name__)

Installed = dict[str, dict[int, Marker]]


@dataclass(frozen=True)
class Failure:
    """Why a version in the source is not served: it failed to download, verify or load."""

    error: str
    marker: Marker
    """The version's marker when it failed: new content in the source is tried afresh."""
    load: bool = False
    """The model server failed to load it: not retried until its content changes."""
    at: float = 0.0
    """When it failed (monotonic): a failed download is retried RETRY_FAILED_AFTER later."""


# A version that failed verification is retried after this long, not on every pass: versions
# are immutable, so it only heals if someone re-uploads its objects.
RETRY_FAILED_AFTER = 300.0
# Follow-up passes while waiting on the model server: every 2 s, for at most a minute.
FOLLOW_UP_SECONDS = 2.0
MAX_FOLLOW_UPS = 30


class Syncer:
    """Keeps the local repository and models.config in step with the source."""

    def __init__(
        self, settings: Settings, source: Source, server: ServerStatus | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self.repository = Repository(settings.model_base_path)
        self.installer = Installer(source, self.repository, settings.checksum_retries)
        self.server = server or ServerStatus(settings.model_server_rest_url)
        self.status = StatusBook(settings.status_file, source.describe())
        self._failures: dict[tuple[str, int], Failure] = {}
        """Versions that failed and are still in the source: reported on every pass until fixed."""
        self._listing: Listing | None = None
        self._scanned_at = 0.0
        self._plans: dict[str, ModelPlan] = {}
        self._rollouts: dict[str, ModelRollout] = {}
        """The weights handed to the gateway in the last pass (rollouts.json)."""
        self.prune_confirmed = False
        """`python -m sync --prune`: prune even when the source lists no model, and treat a
        model server that does not answer as holding nothing (the dyno is stopped)."""

    def boot(self) -> None:
        """First pass. Without the source, fall back on an earlier boot's copy or raise."""
        removed = self.repository.clean_staging()
        if removed:
            log.warning("removed %d unfinished staging folder(s) from an interrupted sync", removed)
        if self.settings.config_file.exists():
            # An earlier boot's config may carry labels; a model server starting now would refuse
            # them (nothing is loaded yet) and exit, so make it safe before the bucket is asked.
            self._write_config(self._plan_local_copy(self.repository.installed()))
        try:
            self.run_pass()
        except SyncError as exc:
            installed = self.repository.installed()
            if not installed:
                raise
            self._serve_local_copy(installed, exc)
        self.status.boot_done()

    def watch(self, stop: threading.Event) -> None:
        """Pass after pass every poll interval until `stop` is set; errors never end the loop.

        While a label move or a deletion waits on the model server, short follow-up passes
        (no bucket listing, only the server's status) apply it seconds after the version loads
        instead of a whole interval later.
        """
        interval = self.settings.poll_interval
        log.info("watching %s every %gs", self.source.describe(), interval)
        follow_ups = 0
        while True:
            follow_up = self._waiting_on_server() and follow_ups < MAX_FOLLOW_UPS
            if stop.wait(min(FOLLOW_UP_SECONDS, interval) if follow_up else interval):
                return
            rescan = time.monotonic() - self._scanned_at >= interval
            follow_ups = 0 if rescan else follow_ups + 1
            try:
                self.run_pass(rescan=rescan)
            except SyncError as exc:
                log.warning("sync pass failed, keeping what is served: %s", exc)
            except Exception:
                log.exception("unexpected error in a sync pass; trying again next interval")

    def _waiting_on_server(self) -> bool:
        return any(p.pending_labels or p.waiting_removal for p in self._plans.values())

    def run_pass(self, rescan: bool = True) -> dict[str, ModelPlan]:
        """Scan, install what the policies want, write models.config, delete what is released.

        `rescan=False` reuses the last listing: only the model server's state is asked again.
        """
        started = time.monotonic()
        try:
            listing = self._scan(rescan)
        except SyncError as exc:
            self.status.record_pass(time.monotonic() - started, [str(exc)])
            self.status.write()
            raise
        errors = [f"{key}: {why}" for key, why in sorted(listing.problems.items())]
        self._forget_fixed(listing)
        failed = self._install_wanted(listing, self.repository.installed(), errors)
        installed = self.repository.installed()
        missing = self._missing(listing, installed)
        dropped = self._to_drop(listing, missing)
        plans = self._plan(listing, installed, failed, dropped, errors)
        self._write_config(plans)
        self._rollouts = write_rollouts(self.settings.rollouts_file, listing, plans, errors)
        self._delete_released(plans)
        self._report_missing(missing, dropped, plans)
        self._record(listing, plans, errors, time.monotonic() - started, missing)
        self._plans = plans
        return plans

    def _scan(self, rescan: bool) -> Listing:
        if rescan or self._listing is None:
            self._scanned_at = time.monotonic()
            self._listing = self.source.scan()
        return self._listing

    def _forget_fixed(self, listing: Listing) -> None:
        """Drop the failures of versions gone from the source or published again."""
        for (model, version), failure in list(self._failures.items()):
            now = listing.complete.get(model, {}).get(version)
            if now is None or not now.same_content(failure.marker):
                del self._failures[(model, version)]

    def _install_wanted(
        self, listing: Listing, installed: Installed, errors: list[str]
    ) -> dict[str, set[int]]:
        """Install what each policy wants; a version that fails is treated as absent, so the
        policy falls back on the next one (latest 1 with a corrupt v2 serves v1)."""
        failed: dict[str, set[int]] = {}
        for model, complete in sorted(listing.complete.items()):
            bad = failed.setdefault(model, self._cooling(model) | self._load_failed(model))
            local = installed.get(model, {})
            while True:
                usable = set(complete) - bad
                wanted = wanted_versions(usable, listing.manifests.get(model))
                todo = [v for v in sorted(wanted) if self._needs_install(complete[v], local.get(v))]
                if not todo or not self._install_all(model, complete, todo, local, errors, bad):
                    break
        return failed

    def _install_all(
        self,
        model: str,
        complete: Mapping[int, Marker],
        todo: list[int],
        local: Mapping[int, Marker],
        errors: list[str],
        bad: set[int],
    ) -> bool:
        """Install `todo`; return True when one failed (and was added to `bad`)."""
        any_failed = False
        for version in todo:
            try:
                result = self.installer.install(complete[version], local)
            except SyncError as exc:
                log.error("skipping %s/%s, keeping what serves now: %s", model, version, exc)
                errors.append(str(exc))
                bad.add(version)
                self._failures[(model, version)] = Failure(
                    str(exc), complete[version], at=time.monotonic()
                )
                any_failed = True
                continue
            self._failures.pop((model, version), None)
            self.status.versions_installed_total += 1
            self.status.bytes_downloaded_total += result.fetched_bytes
        return any_failed

    def _cooling(self, model: str) -> set[int]:
        """Versions that failed recently: not fetched again before RETRY_FAILED_AFTER seconds."""
        now = time.monotonic()
        wait = max(RETRY_FAILED_AFTER, self.settings.poll_interval)
        return {
            v
            for (m, v), f in self._failures.items()
            if m == model and not f.load and now - f.at < wait
        }

    def _load_failed(self, model: str) -> set[int]:
        return {v for (m, v), f in self._failures.items() if m == model and f.load}

    def _note_load_failures(
        self,
        model: str,
        versions: Mapping[int, VersionState],
        complete: Mapping[int, Marker],
        installed: Mapping[int, Marker],
        errors: list[str],
    ) -> set[int]:
        """Versions the model server gave up loading (END with an error): never "served"."""
        found = set()
        for version, state in sorted(versions.items()):
            if state.state != "END" or not state.error or version not in complete:
                continue
            found.add(version)
            if version in installed and (model, version) not in self._failures:
                message = f"{model}/{version}: the model server failed to load it: {state.error}"
                log.error("%s; serving the versions served before", message)
                errors.append(message)
                self._failures[(model, version)] = Failure(message, complete[version], load=True)
        return found & self._load_failed(model)

    def _needs_install(self, remote: Marker, local: Marker | None) -> bool:
        if local is None:
            return True
        if not local.same_content(remote):
            log.warning("%s/%s changed in the source; fetching again", remote.model, remote.version)
            return True
        if not self.repository.intact(local):
            log.warning("%s/%s is damaged on disk; repairing it", remote.model, remote.version)
            return True
        return False

    def _missing(self, listing: Listing, installed: Installed) -> set[str]:
        """Models on disk of which the source has no trace any more."""
        return {
            name
            for name in installed
            if not listing.complete.get(name)
            and name not in listing.incomplete
            and not any(key == name or key.startswith(f"{name}/") for key in listing.problems)
        }

    def _to_drop(self, listing: Listing, missing: set[str]) -> set[str]:
        if not missing or not (self.settings.prune_missing or self.prune_confirmed):
            return set()
        if listing.is_empty() and not self.prune_confirmed:
            # The aws s3 sync --delete lesson: an empty listing is more often a wrong prefix or
            # an emptied bucket than the wish to serve nothing.
            log.warning(
                "not pruning %s: %s lists no model at all (wrong prefix? emptied bucket?); "
                "`make prune` (python -m sync --prune) prunes anyway",
                ", ".join(sorted(missing)), self.source.describe(),
            )  # fmt: skip
            return set()
        return missing

    def _plan(
        self,
        listing: Listing,
        installed: Installed,
        failed: dict[str, set[int]],
        dropped: set[str] | None = None,
        errors: list[str] | None = None,
    ) -> dict[str, ModelPlan]:
        previous = read_previous(self.settings.config_file)
        names = sorted(set(listing.complete) | set(installed) | set(previous))
        plans = {}
        for name in names:
            versions = self.server.versions(name)
            states = None if versions is None else {v: s.state for v, s in versions.items()}
            if versions:
                complete = listing.complete.get(name, {})
                local = installed.get(name, {})
                failed.setdefault(name, set()).update(
                    self._note_load_failures(name, versions, complete, local, errors or [])
                )
            if states is None and self.prune_confirmed and name in (dropped or ()):
                states = {}  # `--prune` runs with the dyno stopped: nothing holds the files
            inputs = ModelInputs(
                name=name,
                base_path=self._base_path(name),
                complete=set(listing.complete.get(name, {})) - failed.get(name, set()),
                manifest=listing.manifests.get(name),
                installed=set(installed.get(name, {})),
                failed=failed.get(name, set()),
                previous=previous.get(name),
                states=states,
                dropped=name in (dropped or ()),
            )
            plans[name] = plan_model(inputs, self.settings.labels_for_unavailable)
        return plans

    def _report_missing(
        self, missing: set[str], dropped: set[str], plans: Mapping[str, ModelPlan]
    ) -> None:
        """One line per pass and model, so a model nobody publishes any more is noticed."""
        where = self.source.describe()
        for name in sorted(missing - dropped):
            served = list(plans[name].served.versions) if name in plans else []
            log.warning(
                "%s is gone from %s but still on disk (served: %s); `make prune` or "
                "DYNOSERVE_SYNC_PRUNE=true drops it (docs/sync.md)",
                name, where, served or "none",
            )  # fmt: skip
        for name in sorted(dropped):
            waiting = sorted(plans[name].waiting_removal) if name in plans else []
            log.info(
                "pruned %s: gone from %s, no longer served%s",
                name, where, f"; versions {waiting} deleted once unloaded" if waiting else "",
            )  # fmt: skip

    def _base_path(self, model: str) -> Path:
        return (self.settings.model_base_path / model).resolve()

    def _write_config(self, plans: Mapping[str, ModelPlan]) -> None:
        path = self.settings.config_file
        if not replace_text_if_changed(path, render(plan.served for plan in plans.values())):
            return
        self.status.config_writes_total += 1
        served = {n: p.served.versions for n, p in plans.items() if p.served.versions}
        log.info("wrote %s: %s", path, _describe(plans) or "no models")
        if not served:
            log.warning("nothing to serve: no complete version in %s", self.source.describe())

    def _delete_released(self, plans: Mapping[str, ModelPlan]) -> None:
        for name, plan in plans.items():
            for version in sorted(plan.deletable):
                self.repository.remove(name, version)
                self.status.versions_removed_total += 1
                log.info("removed %s/%s from disk: no longer served", name, version)

    def _record(
        self,
        listing: Listing,
        plans: Mapping[str, ModelPlan],
        errors: list[str],
        seconds: float,
        missing: set[str] | None = None,
    ) -> None:
        self.status.models = {
            name: ModelStatus(
                served=list(plan.served.versions),
                labels=dict(plan.served.labels),
                pending_labels=plan.pending_labels,
                available_in_source=sorted(listing.complete.get(name, {})),
                incomplete_in_source=sorted(listing.incomplete.get(name, [])),
                waiting_removal=sorted(plan.waiting_removal),
                missing_from_source=name in (missing or ()),
                problems=plan.notes + self._problems(name, errors),
                failed_versions=self._failed_versions(name, listing),
                weights=self._rollouts[name].to_json() if name in self._rollouts else {},
            )
            for name, plan in plans.items()
        }
        self.status.record_pass(seconds, errors)
        self.status.write()

    def _failed_versions(self, model: str, listing: Listing) -> dict[str, str]:
        """Version -> why it is not served: broken in the listing, or failed and not fixed."""
        failed = {str(v): f.error for (m, v), f in sorted(self._failures.items()) if m == model}
        for key, why in sorted(listing.problems.items()):
            name, _, version = key.partition("/")
            if name == model and version.isdigit():
                failed.setdefault(version, why)
        return failed

    def _problems(self, model: str, errors: list[str]) -> list[str]:
        """This pass's errors about the model, and every failure not fixed since, once each."""
        mine = [e for e in errors if e.startswith((f"{model}/", f"{model}:"))]
        kept = [f.error for (m, _v), f in sorted(self._failures.items()) if m == model]
        return mine + [e for e in kept if e not in mine]

    def _serve_local_copy(self, installed: Installed, exc: SyncError) -> None:
        banner = "!" * 72
        log.error(banner)
        log.error("SOURCE UNREACHABLE AT BOOT: %s", exc)
        log.error("SERVING THE LOCAL COPY OF AN EARLIER BOOT (%s), maybe stale", _local(installed))
        log.error(banner)
        plans = self._plan_local_copy(installed)
        self._write_config(plans)
        self.status.degraded = f"serving a local copy from an earlier boot: {exc}"
        self._record(Listing(), plans, [str(exc)], 0.0)

    def _plan_local_copy(self, installed: Installed) -> dict[str, ModelPlan]:
        """Serve what the last config served (or each model's newest version) from disk alone."""
        previous = read_previous(self.settings.config_file)
        plans = {}
        for name, versions in sorted(installed.items()):
            before = previous.get(name) or ServedModel(
                name, self._base_path(name), (max(versions),)
            )
            inputs = ModelInputs(
                name, self._base_path(name), set(), None, set(versions), set(), before,
                self.server.states(name),
            )  # fmt: skip
            plans[name] = plan_model(inputs, self.settings.labels_for_unavailable)
        return plans


def _describe(plans: Mapping[str, ModelPlan]) -> str:
    parts = []
    for name, plan in sorted(plans.items()):
        if plan.served.versions:
            labels = "".join(f" {k}={v}" for k, v in sorted(plan.served.labels.items()))
            parts.append(f"{name} {list(plan.served.versions)}{labels}")
    return "; ".join(parts)


def _local(installed: Installed) -> str:
    return ", ".join(f"{m} {sorted(v)}" for m, v in sorted(installed.items()))
