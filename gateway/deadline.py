"""One deadline per request: every stage of a prediction (metadata, fetch, queue, inference)
spends from the same clock, so the answer comes before Heroku's router gives up (30 s, H12)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import DeadlineExceeded

ARRIVED_KEY = "dynoserve.arrived"
"""WSGI environ key the server sets (gateway/drain.py): time.monotonic() when the request's
first byte was read. A deadline counts from there, so a slow upload and a wait for a worker
thread spend from it too."""


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered by, on `clock` (time.monotonic unless a test says)."""

    at: float
    timeout_s: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + timeout_s, timeout_s, clock)

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any], timeout_s: float) -> Deadline:
        """The request's deadline: from its first byte where the server says when that was
        (waitress, via ARRIVED_KEY), else from now (servers that do not say: the test client)."""
        arrived = environ.get(ARRIVED_KEY)
        if isinstance(arrived, float):
            return cls(arrived + timeout_s, timeout_s)
        return cls.after(timeout_s)

    def remaining(self) -> float:
        """Seconds left; 0 or less once it has passed."""
        return self.at - self.clock()

    def check(self, stage: str) -> float:
        """Seconds left, or DeadlineExceeded naming `stage` when none are."""
        left = self.remaining()
        if left <= 0:
            raise self.exceeded(stage)
        return left

    def exceeded(self, stage: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request ran out of its {self.timeout_s:g} s deadline "
            f"(DYNOSERVE_REQUEST_TIMEOUT_S) in stage {stage!r}",
            stage=stage,
        )
