"""One deadline per request: every stage of a prediction (metadata, fetch, queue, inference)
spends from the same clock, so the answer comes before Heroku's router gives up (30 s, H12)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered by, on `clock` (time.monotonic unless a test says)."""

    at: float
    timeout_s: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + timeout_s, timeout_s, clock)

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
