"""Prometheus metrics under TF Serving's names.

TF Serving's exporter turns `/tensorflow/serving/x` into `:tensorflow:serving:x`; so do we.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_count = Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ["model_name", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ["model_name", "API", "runtime"],
            buckets=_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self._batching()
        self.load_attempt_count = Counter(
            ":tensorflow:serving:load_attempt_count",
            "The number of times a servable load was attempted.",
            ["model", "version", "status"],
            registry=self.registry,
        )

    def _batching(self) -> None:
        prefix = ":tensorflow:serving:batching_session:"
        self.processed_batch_size = Histogram(
            prefix + "processed_batch_size",
            "Tracks the batch size distribution on processing (padding included).",
            ["thread_pool_name"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.input_batch_size = Histogram(
            prefix + "input_batch_size",
            "Tracks the batch size distribution on the inputs (padding excluded).",
            ["thread_pool_name"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.padding_size = Histogram(
            prefix + "padding_size",
            "Tracks the padding size distribution on batches.",
            ["thread_pool_name"],
            buckets=(0, *_BATCH_BUCKETS),
            registry=self.registry,
        )
        self.wrapped_run_count = Counter(
            prefix + "wrapped_run_count",
            "Tracks the number of batched session runs.",
            registry=self.registry,
        )

    def observe_batch(self, pool: str, size: int, padded: int) -> None:
        self.processed_batch_size.labels(pool).observe(padded)
        self.input_batch_size.labels(pool).observe(size)
        self.padding_size.labels(pool).observe(padded - size)
        self.wrapped_run_count.inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
