"""A loaded version as the request path sees it: the servable plus, when on, its batch queues."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from serving.local.batching import BatchingOptions, BatchScheduler
from serving.local.metrics import Metrics
from serving.local.predict import PreparedPredict
from serving.local.servable import Servable


class LoadedVersion:
    """Runs prepared Predict calls directly or through one BatchScheduler per signature+outputs."""

    def __init__(
        self, servable: Servable, batching: BatchingOptions | None, metrics: Metrics
    ) -> None:
        self.servable = servable
        self.batching = batching
        self.metrics = metrics
        self._schedulers: dict[tuple[str, tuple[str, ...]], BatchScheduler] = {}
        self._lock = threading.Lock()
        self._handles = 0
        self._released = threading.Condition(self._lock)

    def acquire(self) -> LoadedVersion:
        """Count a request holding this version (the manager calls it under its state lock)."""
        with self._lock:
            self._handles += 1
        return self

    def release(self) -> None:
        with self._released:
            self._handles -= 1
            self._released.notify_all()

    @property
    def name(self) -> str:
        return self.servable.name

    @property
    def version(self) -> int:
        return self.servable.version

    def run(self, call: PreparedPredict, timeout: float | None) -> dict[str, np.ndarray]:
        if self.batching is None:
            return self._run_direct(call.signature_name, call.aliases, call.inputs)
        return self._scheduler(call).submit(call.inputs, timeout)

    def _run_direct(
        self, signature: str, aliases: tuple[str, ...], inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self.servable.run(signature, inputs, list(aliases))
        elapsed_us = (time.perf_counter() - started) * 1e6
        self.metrics.runtime_latency.labels(self.name, "Predict", "TF2").observe(elapsed_us)
        return outputs

    def _scheduler(self, call: PreparedPredict) -> BatchScheduler:
        key = (call.signature_name, call.aliases)
        with self._lock:
            scheduler = self._schedulers.get(key)
            if scheduler is None:
                assert self.batching is not None
                scheduler = BatchScheduler(
                    self.batching,
                    lambda inputs: self._run_direct(key[0], key[1], inputs),
                    self._observer(),
                    name=f"{self.batching.thread_pool_name}-{self.name}-{self.version}",
                )
                self._schedulers[key] = scheduler
            return scheduler

    def _observer(self) -> Any:
        assert self.batching is not None
        pool = self.batching.thread_pool_name

        def observe(size: int, padded: int) -> None:
            self.metrics.observe_batch(pool, size, padded)

        return observe

    def close(self) -> None:
        """Wait for outstanding handles (as TF Serving's manager does), then stop the batchers."""
        with self._released:
            while self._handles:
                self._released.wait()
            schedulers = list(self._schedulers.values())
            self._schedulers.clear()
        for scheduler in schedulers:
            scheduler.close()
