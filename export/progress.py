"""Progress reporting: what the long steps (loading, saving, verifying, training) call."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_message: str) -> None:
    """The Progress of callers that want none."""


class ProgressPrinter:
    """Progress lines on stderr with the time since start, so stdout keeps just the summary."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)
