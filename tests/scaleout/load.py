"""Closed-loop load through the router (devtools.load's `ClosedLoop`), every answer judged
against what the bucket held.

Each client thread sends, in turn, an unpinned request, one pinned to a version the bucket holds
and one pinned to the label `stable`, each on a new connection (as Heroku's router does). The
test records every change it makes to the bucket in a `BucketTruth`, so a 404 can be judged:
a 404 for a version or label that was in the bucket during the whole request is a failure.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from devtools.load import BODY, ClosedLoop

MODEL = "shapes"
LABEL = "stable"
KINDS = ("unpinned", "version", "label")


@dataclass(frozen=True)
class State:
    """The bucket's versions (complete ones) and labels from a moment on."""

    since: float
    versions: frozenset[int]
    labels: dict[str, int]


class BucketTruth:
    """What the bucket holds, as the test changes it: a timeline of states."""

    def __init__(self, versions: set[int], labels: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self.timeline = [State(0.0, frozenset(versions), dict(labels))]

    def now(self) -> State:
        with self._lock:
            return self.timeline[-1]

    def change(
        self, versions: set[int] | None = None, labels: dict[str, int] | None = None
    ) -> None:
        """Record a change; call it when the change is complete (a removal: before it starts)."""
        with self._lock:
            last = self.timeline[-1]
            self.timeline.append(
                State(
                    time.monotonic(),
                    frozenset(last.versions if versions is None else versions),
                    dict(last.labels if labels is None else labels),
                )
            )

    def during(self, start: float, end: float) -> list[State]:
        """Every state in force at some moment of [start, end]."""
        with self._lock:
            timeline = list(self.timeline)
        first = max(i for i, s in enumerate(timeline) if s.since <= start)
        return [timeline[first], *[s for s in timeline[first + 1 :] if s.since <= end]]


@dataclass(frozen=True)
class Shot:
    """One request and its answer."""

    started: float
    ended: float
    kind: str
    pin: str  # the version number or label, "" unpinned
    status: int  # 0: no HTTP answer
    dyno: str  # upstream address the router chose ("" if none)
    retry_after: bool
    served: int | None  # the version the answer names
    detail: str
    served_header: int | None = None  # the version the Dynoserve-Model-Version header names
    client_key: str | None = None  # the client key sent (weighted rollouts)


def shoot(port: int, kind: str, pin: str, client_key: str | None = None) -> Shot:
    """One prediction through the router (or a dyno's port) on a new connection."""
    query = {"unpinned": "", "version": f"?version={pin}", "label": f"?label={pin}"}[kind]
    if client_key is not None:
        query += ("&" if query else "?") + f"client_key={client_key}"
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST", f"/v1/models/{MODEL}:predict{query}", BODY, {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Shot(started, time.monotonic(), kind, pin, 0, "", False, None, repr(exc))
    finally:
        conn.close()
    served = None
    if response.status == 200:
        served = json.loads(payload).get("version")
    return Shot(
        started,
        time.monotonic(),
        kind,
        pin,
        response.status,
        response.getheader("X-Dyno") or "",
        bool(response.getheader("Retry-After")),
        served,
        payload[:300].decode(errors="replace"),
        _int(response.getheader("Dynoserve-Model-Version")),
        client_key,
    )


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


@dataclass
class PinnedLoad(ClosedLoop):
    """`clients` threads cycling through the request kinds until stop()."""

    truth: BucketTruth = field(kw_only=True)
    clients: int = 3
    stop_timeout_s: float = field(default=40.0, kw_only=True)
    shots: list[Shot] = field(default_factory=list)

    def client(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            kind = KINDS[(index + n) % len(KINDS)]
            versions = sorted(self.truth.now().versions)
            pin = {"unpinned": "", "label": LABEL, "version": str(versions[n % len(versions)])}
            shot = shoot(self.port, kind, pin[kind])
            with self._lock:
                self.shots.append(shot)
            if shot.status == 503 and shot.retry_after:
                self._stop.wait(0.2)  # a polite client honours Retry-After (shortened here)
            n += 1


def verdict(
    shot: Shot,
    truth: BucketTruth,
    arrivals: Mapping[tuple[str, int], float],
    ready: Mapping[str, float] | None = None,
) -> str:
    """ok; booting (503 + Retry-After from a dyno before it was ready); loading (503 +
    Retry-After); early (404 for a version in the bucket that the answering dyno had not
    configured yet: its sync had not listed and installed it); gone (404 for what the bucket
    did not hold at some moment of the request); or failed.

    `arrivals[(dyno, version)]` is when the watcher first saw the version in that dyno's
    models.config (through sync's status file, written after it): a few tenths of a second
    late, so an `early` 404 may have come up to that much after the config was written.
    `ready[dyno]` is when a dyno added under load first answered /readyz with 200."""
    if shot.status == 200:
        return "ok" if _right_version(shot, truth) else "failed"
    if shot.status == 503 and shot.retry_after:
        booted = (ready or {}).get(shot.dyno)
        return "booting" if booted is not None and shot.started < booted else "loading"
    if shot.status == 404 and shot.kind != "unpinned":
        states = truth.during(shot.started, shot.ended)
        if not all(_holds(state, shot) for state in states):
            return "gone"
        if shot.kind == "version":
            arrived = arrivals.get((shot.dyno, int(shot.pin)))
            if arrived is not None and shot.started < arrived:
                return "early"
    return "failed"


def _holds(state: State, shot: Shot) -> bool:
    if shot.kind == "version":
        return int(shot.pin) in state.versions
    return shot.pin in state.labels


def _right_version(shot: Shot, truth: BucketTruth) -> bool:
    """A pinned answer names the pinned version; a label's answer a version the label named
    at or before the end of the request (a dyno answers from the previous target until the new
    one is loaded there)."""
    if shot.kind == "version":
        return shot.served == int(shot.pin)
    if shot.kind == "label":
        named = {s.labels.get(shot.pin) for s in truth.timeline if s.since <= shot.ended}
        return shot.served in named
    return shot.served is not None


VERDICTS = ("ok", "booting", "loading", "early", "gone", "failed")


def tally(
    shots: list[Shot],
    truth: BucketTruth,
    arrivals: Mapping[tuple[str, int], float],
    ready: Mapping[str, float] | None = None,
) -> dict[str, int]:
    counts = {"sent": len(shots), **dict.fromkeys(VERDICTS, 0)}
    for shot in shots:
        counts[verdict(shot, truth, arrivals, ready)] += 1
    return counts
