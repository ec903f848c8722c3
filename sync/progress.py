"""Transfer progress: one line per version in logs, a live bar on a terminal."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

_MB = 1024 * 1024


class Progress:
    """Counts bytes from many transfer threads; logs now and then, and one summary line.

    On a terminal (`bar=True`) it redraws a bar in place instead, for `make publish`.
    """

    def __init__(
        self,
        what: str,
        total_bytes: int,
        logger: logging.Logger,
        bar: bool = False,
        every: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.logger = what, total_bytes, logger
        self.bar, self.every = bar, every
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if self.bar and now - self._last >= 0.1:
                self._last = now
                self._draw()
            elif not self.bar and now - self._last >= self.every:
                self._last = now
                self.logger.info("%s: %s", self.what, self._figures())

    def finish(self, note: str = "") -> float:
        """Log the summary line; return the elapsed seconds."""
        elapsed = time.monotonic() - self.started
        if self.bar:
            self._draw()
            self.stream.write("\n")
        rate = self.done / _MB / elapsed if elapsed > 0 else 0.0
        suffix = f", {note}" if note else ""
        self.logger.info(
            "%s: %s in %.2f s (%.1f MB/s)%s", self.what, _size(self.done), elapsed, rate, suffix
        )
        return elapsed

    def _figures(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done / _MB:.1f}/{self.total / _MB:.1f} MB ({percent:.0f}%)"

    def _draw(self) -> None:
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.what} [{bar}] {self._figures()}")
        self.stream.flush()


def _size(count: int) -> str:
    return f"{count / _MB:.1f} MB" if count >= _MB else f"{count / 1024:.1f} kB"
