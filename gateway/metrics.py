"""Prometheus metrics of one gateway app, in their own registry so tests can build many apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelrepo.syncstatus import ModelStatus, read_status

# `_created` series double the exposition for no use here.
disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BYTES_BUCKETS = (1e3, 1e4, 1e5, 5e5, 1e6, 2e6, 4e6, 8e6, 16e6)


class Metrics:
    """Counters and histograms the app and the predictor update."""

    def __init__(self, sync_status_file: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dynoserve_gateway_requests",
            "HTTP requests answered, by route pattern, model, served version and status.",
            ["route", "model", "version", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dynoserve_gateway_request_duration_seconds",
            "HTTP request latency by route pattern.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "dynoserve_gateway_inference_duration_seconds",
            "gRPC Predict call latency by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fetch = Histogram(
            "dynoserve_gateway_fetch_duration_seconds",
            "Image fetch latency (redirects included), by outcome.",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fetch_bytes = Histogram(
            "dynoserve_gateway_fetch_bytes",
            "Size of fetched images in bytes.",
            buckets=_BYTES_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "dynoserve_gateway_in_flight_requests",
            "Prediction requests being processed now (admitted, not yet answered).",
            registry=r,
        )
        self.shed = Counter(
            "dynoserve_gateway_shed_requests",
            "Prediction requests refused with 503: they could not be answered within the budget.",
            registry=r,
        )
        self._add_admission(r)
        self._add_limits(r)
        self._add_rollouts(r)
        self._add_answer_cache(r)
        if sync_status_file is not None:
            r.register(SyncStatusCollector(sync_status_file))

    def _add_admission(self, r: CollectorRegistry) -> None:
        """The admission queue (gateway/admission.py); its gauges read the queue at scrape time."""
        self.admitted = Counter(
            "dynoserve_gateway_admitted_requests",
            "Prediction requests let through to the model server (at once or after waiting).",
            registry=r,
        )
        self.abandoned = Counter(
            "dynoserve_gateway_abandoned_requests",
            "Waiting prediction requests dropped because their client closed the connection.",
            registry=r,
        )
        self.queue_wait = Histogram(
            "dynoserve_gateway_queue_wait_seconds",
            "Time admitted prediction requests waited in the admission queue.",
            buckets=(0, *_LATENCY_BUCKETS),
            registry=r,
        )
        self.queue_length = Gauge(
            "dynoserve_gateway_queue_length",
            "Prediction requests waiting in the admission queue now.",
            registry=r,
        )
        self.admission_estimate = Gauge(
            "dynoserve_gateway_admission_estimate_seconds",
            "Estimated time to answer a one-image request arriving now behind every image "
            "queued (0 before any answer; a client with less queued is let in sooner).",
            registry=r,
        )
        self.service_rate = Gauge(
            "dynoserve_gateway_service_rate_images_per_second",
            "Recent rate at which images go through prediction (moving average).",
            registry=r,
        )

    def _add_limits(self, r: CollectorRegistry) -> None:
        """Bounded pools (fetch slots, the admission queue, bytes) and the request deadline."""
        self.refusals = Counter(
            "dynoserve_gateway_refusals",
            "Requests refused by a bounded pool: pool (fetches, admission, bytes) and reason "
            "(full: 503 for everyone; over_share: 429, this client holds more than its share; "
            "estimate, queue_full, waited: admission's 503).",
            ["pool", "reason"],
            registry=r,
        )
        self.fetches_in_progress = Gauge(
            "dynoserve_gateway_fetches_in_progress",
            "Image fetch slots taken now (DYNOSERVE_MAX_FETCHES bounds them).",
            registry=r,
        )
        self.memory_reserved = Gauge(
            "dynoserve_gateway_memory_reserved_bytes",
            "Bytes reserved now for request bodies, decoded and fetched images and their copies "
            "(DYNOSERVE_MEMORY_BUDGET_BYTES bounds them).",
            registry=r,
        )
        self.deadline_misses = Counter(
            "dynoserve_gateway_deadline_misses",
            "Requests (or batch images) whose deadline ran out, by the stage it ran out in.",
            ["stage"],
            registry=r,
        )

    def _add_answer_cache(self, r: CollectorRegistry) -> None:
        """The answer cache (gateway/answercache.py); counts are of images, not requests."""
        self.answer_cache_hits = Counter(
            "dynoserve_gateway_answer_cache_hits",
            "Images answered from the answer cache (no Predict call, no admission slot).",
            registry=r,
        )
        self.answer_cache_misses = Counter(
            "dynoserve_gateway_answer_cache_misses",
            "Images looked up in the answer cache and not found (sent to the model).",
            registry=r,
        )
        self.answer_cache_evictions = Counter(
            "dynoserve_gateway_answer_cache_evictions",
            "Answer cache entries dropped, by reason (size: least recently used out to stay "
            "within DYNOSERVE_ANSWER_CACHE_BYTES; unloaded: their version is no longer served).",
            ["reason"],
            registry=r,
        )
        self.answer_cache_bytes = Gauge(
            "dynoserve_gateway_answer_cache_bytes",
            "Bytes the answer cache holds now (estimated per entry; at most "
            "DYNOSERVE_ANSWER_CACHE_BYTES).",
            registry=r,
        )
        self.answer_cache_entries = Gauge(
            "dynoserve_gateway_answer_cache_entries",
            "Answers in the answer cache now.",
            registry=r,
        )

    def _add_rollouts(self, r: CollectorRegistry) -> None:
        """Per-version numbers, to compare a canary with stable (docs/rollouts.md)."""
        self.version_predictions = Counter(
            "dynoserve_gateway_version_predictions",
            "Predict calls by model, version and outcome (ok, or the error's code).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.version_inference = Histogram(
            "dynoserve_gateway_version_inference_duration_seconds",
            "gRPC Predict call latency by model and version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rollout_assignments = Counter(
            "dynoserve_gateway_rollout_assignments",
            "Requests that followed rollout weights, by model, route (the label; empty for "
            "unpinned requests), the version they got and how (key: the client key's bucket; "
            "random: no key).",
            ["model", "route", "version", "draw"],
            registry=r,
        )
        self.rollout_fallbacks = Counter(
            "dynoserve_gateway_rollout_fallbacks",
            "Weighted requests whose picked version was not available here, by the version "
            "picked and the one that answered (unweighted: none of the weighted versions was).",
            ["model", "route", "wanted", "served"],
            registry=r,
        )

    def refused(self, pool: str, reason: str) -> None:
        self.refusals.labels(pool, reason).inc()

    def count_fetch_connections(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Export the image fetcher's connection counts (ImageFetcher.connection_counts)."""
        self.registry.register(FetchConnectionsCollector(counts))


class FetchConnectionsCollector(Collector):
    """Connections to image hosts by what became of them, read from the fetcher at scrape time
    (its pool counts them: a Counter here would need the fetcher to know the app's metrics)."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "dynoserve_gateway_fetch_connections",
            "Connections used to fetch images, by connection: new (opened), reused (kept "
            "alive from an earlier fetch of the same host and vetted address), stale (kept, "
            "but the host had closed it; replaced by a new one).",
            labels=["connection"],
        )
        for kind, value in self.counts().items():
            family.add_metric([kind], value)
        yield family


class SyncStatusCollector(Collector):
    """Exports the numbers in sync's status file, read at scrape time (absent file: nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        status = read_status(self.path)
        if status is None:
            return
        for key, value in sorted(status.numbers().items()):
            name = "dynoserve_sync_" + "".join(c if c.isalnum() else "_" for c in key)
            if key.endswith("_total"):  # sync's counters: they only grow within one process
                yield CounterMetricFamily(name, f"sync status field {key!r}", value=value)
            else:
                yield GaugeMetricFamily(name, f"sync status field {key!r}", value=value)
        yield _failed_versions(status.models)


def _failed_versions(models: dict[str, ModelStatus]) -> Metric:
    """One series per version sync could not bring to the model server (download, checksum or
    load failure), so an alert can name it; gone once the version is fixed or removed."""
    family = GaugeMetricFamily(
        "dynoserve_sync_version_failed",
        "1 for each version in the bucket that failed to download, verify or load.",
        labels=["model", "version"],
    )
    for model, body in sorted(models.items()):
        for version in sorted(body.failed_versions):
            family.add_metric([model, version], 1.0)
    return family
