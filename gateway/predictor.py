"""The request path: resolve the version, get the images ready, one Predict call, rank the scores.

Implements interface.Predictor against a TF-Serving-compatible model server. Knows nothing of
Flask; every failure is a GatewayError (per image for batches, so one bad URL spoils nothing).
The parts live by role: versions.py (which version, or why none), inputs.py (images to tensor),
topk.py (scores to ranked classes), signatures.py (what a signature takes, its JSON view).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.answercache import AnswerCache, Recall, cache_state
from gateway.catalog import ModelCatalog
from gateway.client import (
    DECODED_OUTPUT,
    ModelServerClient,
    PredictOutput,
    Signature,
    VersionMetadata,
)
from gateway.deadline import Deadline
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
    ModelNotReady,
    ModelServerError,
    NotFound,
)
from gateway.fetch import FetchPolicy, ImageFetcher
from gateway.inputs import ImagePreparer, input_tensor
from gateway.interface import (
    ItemResult,
    ModelInfo,
    PredictRequest,
    PredictResult,
    Readiness,
    VersionInfo,
)
from gateway.metrics import Metrics
from gateway.rollouts import RolloutTable
from gateway.settings import Settings
from gateway.signatures import InputPlan, describe_signature, input_plan
from gateway.syncstatus import failed_versions
from gateway.topk import rank
from gateway.versions import NotFoundExplainer, VersionResolver

log = logging.getLogger(__name__)

READINESS_TIMEOUT_S = 2.0


class VersionUnloaded(ModelNotReady):
    """The version a request was pinned to went away between metadata and Predict."""


@dataclass
class Prepared:
    """A request with its version resolved and its images fetched: ready for one Predict."""

    request: PredictRequest
    meta: VersionMetadata
    plan: InputPlan
    items: list[ItemResult]
    payloads: list[tuple[int, bytes]]  # (index in the request, input) of each image ready
    started: float  # perf_counter when preparation began
    recall: Recall | None = None  # the answer cache's part in this request; None when off

    @property
    def cost(self) -> int:
        """Images to predict: what admission counts (failed images need no capacity)."""
        return len(self.payloads)


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
        self.versions = VersionResolver(
            self.client,
            rollouts=RolloutTable(settings.rollouts_file),
            metrics=metrics,
            catalog=self.catalog,
        )
        self.explain = NotFoundExplainer(self.client, self.catalog, settings.sync_status_file)
        self.images = ImagePreparer(
            self.fetcher, settings.max_image_pixels, metrics, settings.max_fetches
        )
        self.answers = AnswerCache(settings.answer_cache_bytes, metrics)

    def close(self) -> None:
        self.images.close()
        self.fetcher.close()
        self.client.close()

    def known_models(self) -> set[str]:
        return set(self.catalog.entries())

    def predict(self, request: PredictRequest) -> PredictResult:
        return self.infer(self.prepare(request))

    def prepare(self, request: PredictRequest) -> Prepared:
        """Everything before the model: resolve the version, fetch and vet the images. Holds
        no admission slot (admission.py asks for one only between this and infer)."""
        start = time.perf_counter()
        meta = self._resolve(request)
        plan = input_plan(self._signature(meta, request.signature))
        recall = self._recall(request, meta)
        items, payloads = self.images.prepare_all(
            request.images, plan, request.client, request.deadline, recall
        )
        if recall is not None:  # answered from the cache: no Predict, no admission slot
            recall.fill(items, [i for i, _ in payloads], request.top_k)
        return Prepared(request, meta, plan, items, payloads, start, recall)

    def _recall(self, request: PredictRequest, meta: VersionMetadata) -> Recall | None:
        """The answer cache's view for this request's version; when the version has entries
        but was not seen served lately, GetModelStatus first (a failure: every image misses)."""
        if not self.answers.enabled:
            return None
        if self.answers.needs_check(meta.model, meta.version):
            try:
                with self._stage(request.deadline, "metadata") as left:
                    statuses = self.client.status(meta.model, request.request_id, left)
                available = [s.version for s in statuses if s.state == "AVAILABLE"]
                self.answers.served(meta.model, available)
            except GatewayError as exc:
                log.info("answer cache unused: version not confirmed served: %s", exc.message)
        signature = request.signature or self.settings.signature_name
        return Recall(self.answers, meta.model, meta.version, signature)

    def infer(self, prepared: Prepared) -> PredictResult:
        """The Predict call for the images that are ready, and the ranked answer."""
        request, meta, items, payloads = (
            prepared.request,
            prepared.meta,
            prepared.items,
            prepared.payloads,
        )
        # Fetches of a batch run in parallel: the slowest one is the time spent fetching.
        fetch_ms = max(item.fetch_ms for item in items)
        result = PredictResult(request.model, meta.version, items, fetch_ms=fetch_ms)
        recall = prepared.recall
        if payloads:
            tensors = [p for _, p in payloads]
            # Answers recalled for this version forbid answering the rest from another one.
            fixed = recall is not None and recall.any_found
            output, infer_s = self._infer_with_rollout_retry(
                request, meta, prepared.plan, tensors, fixed
            )
            result.version = output.version or meta.version
            result.inference_ms = infer_s * 1000
            indices = [i for i, _ in payloads]
            rank(output, indices, items, request.top_k)
            if recall is not None:
                recall.keep(items, indices, output)
        result.cache = cache_state(items) if recall is not None else ""
        result.total_ms = (time.perf_counter() - prepared.started) * 1000
        return result

    def _infer_with_rollout_retry(
        self,
        request: PredictRequest,
        meta: VersionMetadata,
        plan: InputPlan,
        payloads: list[bytes],
        fixed: bool = False,
    ) -> tuple[PredictOutput, float]:
        """Infer; if "latest" or a label moved on and the old version was unloaded meanwhile
        (a rollout), resolve again and retry once, provided the input plan is unchanged and
        the version is not `fixed` (part of the answer came from it already)."""
        try:
            return self._infer(request, meta, plan, payloads)
        except VersionUnloaded:
            if request.version is not None or fixed:
                raise
            fresh = self._resolve(request)
            if input_plan(self._signature(fresh, request.signature)) != plan:
                raise
            return self._infer(request, fresh, plan, payloads)

    def _resolve(self, request: PredictRequest) -> VersionMetadata:
        try:
            with self._stage(request.deadline, "metadata") as left:
                return self.versions.resolve(
                    request.model,
                    request.version,
                    request.label,
                    request.request_id,
                    left,
                    client_key=request.client_key,
                    weighted=True,
                )
        except NotFound as exc:
            raise self.explain.not_found(request.model, request.version, request.label) from exc
        except InvalidArgument as exc:
            if request.label is not None and "label" in exc.message.lower():
                raise self.explain.label_error(request.model, request.label) from exc
            raise

    def version_metadata(self, request: PredictRequest) -> VersionMetadata:
        """The version `request` means, with all its signatures (the /v2 API reads them)."""
        return self._resolve(request)

    def _signature(self, meta: VersionMetadata, name: str = "") -> Signature:
        name = name or self.settings.signature_name
        if name not in meta.signatures:
            raise ModelServerError(
                f"model {meta.model!r} version {meta.version} has no signature {name!r}",
                code="unsupported_model",
            )
        return meta.signatures[name]

    def _infer(
        self, request: PredictRequest, meta: VersionMetadata, plan: InputPlan, payloads: list[bytes]
    ) -> tuple[PredictOutput, float]:
        signature = request.signature or self.settings.signature_name
        tensor = input_tensor(plan, self._signature(meta, signature), payloads)
        try:
            with self._stage(request.deadline, "inference") as left:
                output, elapsed = self.client.predict(
                    meta.model,
                    meta.version,
                    signature,
                    {plan.key: tensor},
                    request.request_id,
                    left,
                )
        except GatewayError as exc:
            self._count_version(meta, exc.code)
            if not isinstance(exc, NotFound):
                raise
            # The version we resolved was unloaded meanwhile: forget it; a retry resolves anew.
            self.versions.forget(meta.model)
            self.answers.drop_version(meta.model, meta.version)
            raise VersionUnloaded(
                f"model {meta.model!r} version {meta.version} was unloaded"
            ) from exc
        if plan.tolerant and output.decoded is None:
            # Its images were sent unproven (images.check_image): no row can be trusted.
            self._count_version(meta, ModelServerError.code, output.version)
            raise ModelServerError(
                f"signature {signature!r} declares a {DECODED_OUTPUT!r} output but the model "
                "server answered without it"
            )
        if self.metrics is not None:
            self.metrics.inference.labels(meta.model).observe(elapsed)
            version = str(output.version or meta.version)
            self.metrics.version_inference.labels(meta.model, version).observe(elapsed)
        self._count_version(meta, "ok", output.version)
        return output, elapsed

    def _count_version(self, meta: VersionMetadata, outcome: str, served: int = 0) -> None:
        """Per-version Predict outcomes, so a canary's errors compare with stable's."""
        if self.metrics is not None:
            version = str(served or meta.version)
            self.metrics.version_predictions.labels(meta.model, version, outcome).inc()

    @contextmanager
    def _stage(self, deadline: Deadline | None, stage: str) -> Iterator[float | None]:
        """A gRPC call under the request's deadline: it gets what is left (None: no request
        deadline, the per-call cap only); running out, in or before it, names `stage`."""
        try:
            yield None if deadline is None else deadline.check(stage)
        except DeadlineExceeded as exc:
            if self.metrics is not None:
                self.metrics.deadline_misses.labels(stage).inc()
            raise DeadlineExceeded(exc.message, stage=stage) from exc

    def list_models(self, request_id: str = "") -> list[ModelInfo]:
        infos = []
        for name, entry in sorted(self.catalog.entries().items()):
            versions = self._versions(name, request_id)
            infos.append(ModelInfo(name, versions, entry.labels))
            if any(v.state == "AVAILABLE" for v in versions):
                infos[-1].label_moves = self.versions.pending_moves(name, request_id)
        return infos

    def describe(self, model: str, request_id: str = "") -> ModelInfo:
        versions = self._versions(model, request_id)
        entry = self.catalog.get(model)
        if not versions and entry is None:
            raise self.explain.model_not_found(model)
        info = ModelInfo(model, versions, entry.labels if entry else {})
        if any(v.state == "AVAILABLE" for v in versions):
            meta = self.versions.resolve(model, None, None, request_id)
            info.signature_version = meta.version
            info.signature, info.num_classes = describe_signature(self._signature(meta))
            info.label_moves = self.versions.pending_moves(model, request_id)
        return info

    def _versions(self, model: str, request_id: str) -> list[VersionInfo]:
        """The model server's versions, and those sync failed to bring to it, with the error."""
        try:
            statuses = self.client.status(model, request_id)
        except NotFound:
            statuses = []
        found = {s.version: VersionInfo(s.version, s.state, s.error_message) for s in statuses}
        for version, why in failed_versions(self.settings.sync_status_file, model).items():
            known = found.get(version)
            if known is None or not (known.error or known.state == "AVAILABLE"):
                # Never reached the server (download or checksum failure) or not reported yet:
                # END, as TF Serving reports a version it gave up on.
                found[version] = VersionInfo(version, "END", why)
        return [found[v] for v in sorted(found, reverse=True)]

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
