"""The request path: resolve the version, get the images ready, one Predict call, rank the scores.

Implements results.Predictor against a TF-Serving-compatible model server. Knows nothing of
Flask; every failure is a GatewayError (per image for batches, so one bad URL spoils nothing).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from gateway.catalog import ModelCatalog
from gateway.client import (
    ModelServerClient,
    PredictOutput,
    Signature,
    VersionMetadata,
    VersionStatus,
    float_tensor,
    string_tensor,
)
from gateway.errors import (
    GatewayError,
    InvalidArgument,
    LabelNotFound,
    ModelNotFound,
    ModelNotReady,
    ModelServerError,
    NotFound,
    VersionNotFound,
)
from gateway.fetch import FetchPolicy, ImageFetcher
from gateway.images import check_image, encoded_for_graph, pixels_for_graph
from gateway.metrics import Metrics
from gateway.results import (
    ImageInput,
    ItemResult,
    ModelInfo,
    PredictRequest,
    PredictResult,
    Readiness,
    Score,
    VersionInfo,
)
from gateway.settings import Settings
from gateway.signatures import InputPlan, check_tensor, describe_signature, input_plan
from gateway.syncstatus import served_versions

log = logging.getLogger(__name__)

# How long "latest" or a label maps to the same version before we ask the server again.
ALIAS_TTL_S = 5.0
# TF Serving's ManagerState names for a version on its way to AVAILABLE.
LOADING_STATES = ("START", "LOADING")
READINESS_TIMEOUT_S = 2.0


class VersionUnloaded(ModelNotReady):
    """The version a request was pinned to went away between metadata and Predict."""


def top_k(scores: list[float], classes: list[str] | None, k: int) -> list[Score]:
    """The k best classes, best first (ties keep class order)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [
        Score(label=classes[i] if classes and i < len(classes) else str(i), class_id=i, score=s)
        for i, s in ((i, float(scores[i])) for i in order)
    ]


class VersionResolver:
    """Caches GetModelMetadata: pinned versions for good, latest/labels for ALIAS_TTL_S."""

    def __init__(self, client: ModelServerClient, max_entries: int = 256) -> None:
        self.client = client
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, int], VersionMetadata] = OrderedDict()
        self._aliases: dict[tuple[str, str], tuple[float, int]] = {}

    def resolve(
        self, model: str, version: int | None, label: str | None, request_id: str = ""
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
        meta = self.client.metadata(model, version, None if version else label, request_id)
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


class ModelServerPredictor:
    """The real Predictor; thread-safe, one per process."""

    def __init__(
        self,
        settings: Settings,
        client: ModelServerClient | None = None,
        fetcher: ImageFetcher | None = None,
        catalog: ModelCatalog | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or ModelServerClient.from_settings(settings)
        self.fetcher = fetcher or ImageFetcher(FetchPolicy.from_settings(settings))
        self.catalog = catalog or ModelCatalog(settings.models, settings.model_config_file)
        self.metrics = metrics
        self.versions = VersionResolver(self.client)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()
        self.client.close()

    def known_models(self) -> set[str]:
        return set(self.catalog.entries())

    def predict(self, request: PredictRequest) -> PredictResult:
        start = time.perf_counter()
        meta = self._resolve(request)
        plan = input_plan(self._signature(meta))
        items, payloads = self._prepare_all(request.images, plan)
        # Fetches of a batch run in parallel: the slowest one is the time spent fetching.
        fetch_ms = max(item.fetch_ms for item in items)
        result = PredictResult(request.model, meta.version, items, fetch_ms=fetch_ms)
        if payloads:
            output, infer_s = self._infer_once_more(request, meta, plan, [p for _, p in payloads])
            result.version = output.version or meta.version
            result.inference_ms = infer_s * 1000
            self._rank(output, [i for i, _ in payloads], items, request.top_k)
        result.total_ms = (time.perf_counter() - start) * 1000
        return result

    def _infer_once_more(
        self, request: PredictRequest, meta: VersionMetadata, plan: InputPlan, payloads: list[bytes]
    ) -> tuple[PredictOutput, float]:
        """Infer; if "latest" or a label moved on and the old version was unloaded meanwhile
        (a rollout), resolve again and retry once, provided the input plan is unchanged."""
        try:
            return self._infer(request, meta, plan, payloads)
        except VersionUnloaded:
            if request.version is not None:
                raise
            fresh = self._resolve(request)
            if input_plan(self._signature(fresh)) != plan:
                raise
            return self._infer(request, fresh, plan, payloads)

    def _resolve(self, request: PredictRequest) -> VersionMetadata:
        try:
            return self.versions.resolve(
                request.model, request.version, request.label, request.request_id
            )
        except NotFound as exc:
            raise self._not_found(request.model, request.version, request.label) from exc
        except InvalidArgument as exc:
            if request.label is not None and "label" in exc.message.lower():
                raise self._label_error(request.model, request.label, None) from exc
            raise

    def _not_found(self, model: str, version: int | None, label: str | None) -> GatewayError:
        """Tell apart an unknown model, version or label and one still loading; say what exists."""
        statuses = self._statuses(model)
        if label is not None and (statuses or model in self.known_models()):
            return self._label_error(model, label, statuses)
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
        if statuses or model in self.known_models():
            return ModelNotReady(f"model {model!r} has no AVAILABLE version yet")
        if not self.known_models():
            # Booting: Heroku's router sends requests as soon as $PORT is bound.
            return ModelNotReady(
                "no model is configured on this instance yet (sync has not written "
                "models.config); retry shortly"
            )
        return self._model_not_found(model)

    def _coming(self, model: str, version: int, statuses: list[VersionStatus]) -> bool:
        """The version is on its way here: sync installed it and wrote it into models.config
        (the model server loads it at its next poll), or the server is loading it. A version
        another instance may serve already is then a 503 here, not a 404 (README, scale-out)."""
        state = next((s.state for s in statuses if s.version == version), None)
        if state in LOADING_STATES:
            return True
        return state is None and version in served_versions(self.settings.sync_status_file, model)

    def _label_error(
        self, model: str, label: str, statuses: list[VersionStatus] | None
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

    def _model_not_found(self, model: str) -> ModelNotFound:
        names = ", ".join(sorted(self.known_models())) or "none configured"
        return ModelNotFound(f"no model named {model!r}; models: {names}")

    def _statuses(self, model: str) -> list[VersionStatus]:
        try:
            return self.client.status(model)
        except NotFound:
            return []

    def _signature(self, meta: VersionMetadata) -> Signature:
        name = self.settings.signature_name
        if name not in meta.signatures:
            raise ModelServerError(
                f"model {meta.model!r} version {meta.version} has no signature {name!r}",
                code="unsupported_model",
            )
        return meta.signatures[name]

    def _prepare_all(
        self, images: tuple[ImageInput, ...], plan: InputPlan
    ) -> tuple[list[ItemResult], list[tuple[int, bytes]]]:
        """Fetch and vet every image (in parallel); per-image errors stay with their item."""
        if len(images) == 1:
            outcomes = [self._prepare(images[0], plan)]
        else:
            # Each task runs in a copy of this request's context, so logs keep its request id.
            tasks = [
                self._pool.submit(contextvars.copy_context().run, self._prepare, image, plan)
                for image in images
            ]
            outcomes = [task.result() for task in tasks]
        items: list[ItemResult] = []
        payloads: list[tuple[int, bytes]] = []
        for index, (item, payload) in enumerate(outcomes):
            items.append(item)
            if payload is not None:
                payloads.append((index, payload))
        return items, payloads

    def _prepare(self, image: ImageInput, plan: InputPlan) -> tuple[ItemResult, bytes | None]:
        item = ItemResult()
        try:
            data = image.data if image.data is not None else self._fetch(image.url or "", item)
            checked = check_image(data, self.settings.max_image_pixels)
            if plan.kind == "encoded":
                return item, encoded_for_graph(checked)
            return item, pixels_for_graph(checked, plan.height, plan.width)
        except GatewayError as exc:
            item.error = exc
            return item, None

    def _fetch(self, url: str, item: ItemResult) -> bytes:
        start = time.perf_counter()
        outcome = "error"
        try:
            fetched = self.fetcher.fetch(url)
            outcome = "ok"
            if self.metrics is not None:
                self.metrics.fetch_bytes.observe(len(fetched.data))
            return fetched.data
        finally:
            elapsed = time.perf_counter() - start
            item.fetch_ms = elapsed * 1000
            if self.metrics is not None:
                self.metrics.fetch.labels(outcome).observe(elapsed)

    def _infer(
        self, request: PredictRequest, meta: VersionMetadata, plan: InputPlan, payloads: list[bytes]
    ) -> tuple[PredictOutput, float]:
        tensor = (
            string_tensor(payloads)
            if plan.kind == "encoded"
            else float_tensor(payloads, plan.height, plan.width)
        )
        check_tensor(plan.key, self._signature(meta).inputs[plan.key], tensor)
        signature = self.settings.signature_name
        try:
            output, elapsed = self.client.predict(
                meta.model, meta.version, signature, {plan.key: tensor}, request.request_id
            )
        except NotFound as exc:
            # The version we resolved was unloaded meanwhile: forget it; a retry resolves anew.
            self.versions.forget(meta.model)
            raise VersionUnloaded(
                f"model {meta.model!r} version {meta.version} was unloaded"
            ) from exc
        if self.metrics is not None:
            self.metrics.inference.labels(meta.model).observe(elapsed)
        return output, elapsed

    def _rank(
        self, output: PredictOutput, indices: list[int], items: list[ItemResult], k: int
    ) -> None:
        if len(output.scores) != len(indices):
            raise ModelServerError(
                f"model answered {len(output.scores)} rows for {len(indices)} images"
            )
        for row, index in enumerate(indices):
            classes = output.classes[row] if output.classes else None
            items[index].predictions = top_k(output.scores[row], classes, k)

    def list_models(self, request_id: str = "") -> list[ModelInfo]:
        infos = []
        for name, entry in sorted(self.catalog.entries().items()):
            infos.append(ModelInfo(name, self._versions(name, request_id), entry.labels))
        return infos

    def describe(self, model: str, request_id: str = "") -> ModelInfo:
        versions = self._versions(model, request_id)
        entry = self.catalog.get(model)
        if not versions and entry is None:
            raise self._model_not_found(model)
        info = ModelInfo(model, versions, entry.labels if entry else {})
        if any(v.state == "AVAILABLE" for v in versions):
            meta = self.versions.resolve(model, None, None, request_id)
            info.extra["signature_version"] = meta.version
            info.signature, info.num_classes = describe_signature(self._signature(meta))
        return info

    def _versions(self, model: str, request_id: str) -> list[VersionInfo]:
        try:
            statuses = self.client.status(model, request_id)
        except NotFound:
            return []
        return [
            VersionInfo(s.version, s.state, s.error_message)
            for s in sorted(statuses, key=lambda s: -s.version)
        ]

    def readiness(self) -> Readiness:
        """Ready when every configured model has an AVAILABLE version (per GetModelStatus)."""
        names = sorted(self.known_models())
        states = {name: self._model_state(name) for name in names}
        ready = bool(states) and all(s == "AVAILABLE" for s in states.values())
        return Readiness(ready, states)

    def _model_state(self, model: str) -> str:
        try:
            statuses = self.client.status(model, timeout=READINESS_TIMEOUT_S)
        except GatewayError as exc:
            return f"{exc.code}: {exc.message}"
        if any(s.state == "AVAILABLE" for s in statuses):
            return "AVAILABLE"
        return ",".join(f"{s.version}:{s.state}" for s in statuses) or "no versions"


def _by_version(status: VersionStatus) -> int:
    return status.version
