"""Each dyno watched directly (not through the router): which versions its model server holds,
where its label points, what its models.config lists, and the memory of its processes."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devtools.dynostack import Dyno
from tests.scaleout.load import LABEL, MODEL, shoot
from tests.support import http_json


@dataclass(frozen=True)
class Look:
    """One dyno at one moment."""

    at: float
    states: dict[int, str]  # version -> state, from GET /v1/models/<model>
    label_serves: int | None  # the version a request pinned to the label was answered by
    configured: frozenset[int]  # versions in models.config, from sync's status file


def look(dyno: Dyno) -> Look:
    # The status file first: a version's arrival is this look's `at`, and a 404 from a request
    # started after it counts as a failure. Read after the model server and a label request
    # (tens of ms under load), it dated an arrival before the file held it.
    at = time.monotonic()
    try:
        sync = json.loads(dyno.status_file.read_text())
        configured = frozenset(sync["models"][MODEL]["served"])
    except (OSError, ValueError, KeyError):
        configured = frozenset()
    states: dict[int, str] = {}
    try:
        status, _, body = http_json(f"{dyno.base}/v1/models/{MODEL}")
    except (OSError, ValueError):  # not answering (yet): nothing seen this time
        status, body = 0, {}
    if status == 200:
        states = {int(v["version"]): v["state"] for v in body.get("versions", [])}
    shot = shoot(dyno.port, "label", LABEL)
    return Look(at, states, shot.served, configured)


def rss_by_role(dyno: Dyno) -> dict[str, int]:
    """Resident memory per role, bytes (a role with several processes: their sum)."""
    found: dict[str, int] = defaultdict(int)
    for pid, role in dyno.processes().items():
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError):
            continue
        found[role] += resident * 4096
    return dict(found)


@dataclass
class Watcher:
    """Looks at every dyno every `interval` seconds and samples RSS, until stop()."""

    dynos: list[Dyno]
    interval: float = 0.25
    looks: dict[str, list[Look]] = field(default_factory=lambda: defaultdict(list))
    peak_rss: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for dyno in self.dynos:
                self.looks[dyno.name].append(look(dyno))
                for role, resident in rss_by_role(dyno).items():
                    self.peak_rss[role] = max(self.peak_rss[role], resident)

    def first(self, dyno: Dyno, since: float, holds: Callable[[Look], bool]) -> float | None:
        """Seconds from `since` until `holds` was first seen true on `dyno` (None: not yet)."""
        for seen in list(self.looks[dyno.name]):
            if seen.at >= since and holds(seen):
                return seen.at - since
        return None

    def wait(self, since: float, holds: Callable[[Look], bool], timeout: float) -> dict[str, float]:
        """Per dyno, seconds from `since` until `holds`; TimeoutError if a dyno never gets there."""
        deadline = time.monotonic() + timeout
        while True:
            found = {d.name: self.first(d, since, holds) for d in self.dynos}
            if all(v is not None for v in found.values()):
                return {name: round(v, 2) for name, v in found.items() if v is not None}
            if time.monotonic() > deadline:
                last = {name: looks[-1] if looks else None for name, looks in self.looks.items()}
                raise TimeoutError(f"not converged after {timeout:.0f}s: {found}; last: {last}")
            time.sleep(self.interval)
