"""Weighted rollouts on two dynos behind the round-robin router (docs/rollouts.md): the bucket
holds versions 1 and 2 and `make labels WEIGHTS=...` (python -m sync.labels) sets the weights;
each dyno's sync hands them to its gateway.

- 90/10: the share of version 2 is 10 % within the binomial tolerance below, for client keys
  and for random draws, and every keyed answer is the version the contract's bucket function
  names (modelrepo/rollouts.py), on both dynos;
- the same key gets the same version from either dyno;
- moving 10 -> 50 -> 100 under load fails no request.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.dynostack import Dyno
from modelrepo.rollouts import ModelRollout, client_bucket, pick, read_rollouts
from tests.scaleout.conftest import RESULTS, Bucket, Fleet, dyno_logs
from tests.scaleout.load import MODEL, Shot, shoot
from tests.support import GATEWAY_PYTHON, http_json, python_env, wait_for

pytestmark = pytest.mark.slow

REQUESTS = 600
"""Requests per share measured (keyed, then random)."""
CLIENTS = 4
# The count of version-2 answers out of n is Binomial(n, p): a 4-sd band around n*p. For
# n = 600, p = 0.1: sd = sqrt(600 * 0.1 * 0.9) = 7.35, so 60 +- 29 answers (10 % +- 4.9 points);
# a correct split falls outside with probability 6e-5. The keyed count is deterministic (fixed
# keys): it tests that SHA-256 buckets of distinct keys spread like draws.
SD_BAND = 4.0


def tolerance(n: int, p: float) -> int:
    """Half-width, in answers, of the band a Binomial(n, p) count stays in (SD_BAND sd)."""
    return math.ceil(SD_BAND * math.sqrt(n * p * (1 - p)))


def set_weights(bucket: Bucket, weights: str) -> None:
    """`make labels NAME=shapes WEIGHTS=...` against the bucket, as an operator runs it."""
    argv = [str(GATEWAY_PYTHON), "-m", "sync.labels", "--name", MODEL, "--weights", weights]
    env = python_env({**bucket.env, "DYNOSERVE_S3_ENDPOINT_URL": bucket.endpoint})
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def applied(dyno: Dyno) -> ModelRollout | None:
    """The weights the dyno's sync handed its gateway."""
    path = Path(dyno.env["DYNOSERVE_MODEL_BASE_PATH"]) / "rollouts.json"
    return read_rollouts(path).get(MODEL)


def move(bucket: Bucket, fleet: Fleet, split: dict[int, int]) -> float:
    """Set the weights and wait until both dynos apply them; returns how long that took."""
    started = time.monotonic()
    set_weights(bucket, " ".join(f"{v}={w}" for v, w in split.items()))
    for dyno in fleet.dynos:
        wait_for(lambda d=dyno: applied(d) == ModelRollout(split), timeout=30)  # type: ignore[misc]
    return round(time.monotonic() - started, 2)


def both_loaded(dyno: Dyno) -> bool:
    try:
        status, _, body = http_json(f"{dyno.base}/v1/models/{MODEL}")
    except (OSError, ValueError):
        return False
    states = {v["version"]: v["state"] for v in body.get("versions", [])} if status == 200 else {}
    return states.get(1) == states.get(2) == "AVAILABLE"


@pytest.fixture(scope="module")
def weighted_bucket(bucket: Bucket) -> Bucket:
    """Versions 1 and 2 in the bucket (policy all, stable -> 1) and the weights 90/10, before
    the dynos boot."""
    bucket.publish(2)
    set_weights(bucket, "1=90 2=10")
    return bucket


@pytest.fixture(scope="module")
def rollout_fleet(weighted_bucket: Bucket, fleet: Fleet) -> Fleet:
    for dyno in fleet.dynos:
        wait_for(lambda d=dyno: both_loaded(d), timeout=60)  # type: ignore[misc]
    return fleet


def fire(port: int, keys: Sequence[str | None]) -> list[Shot]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda key: shoot(port, "unpinned", "", key), keys))


def not_from_their_bucket(shots: list[Shot], split: dict[int, int]) -> list[Shot]:
    """Keyed answers whose version is not the one their key's bucket names."""
    return [s for s in shots if s.served != pick(split, client_bucket(MODEL, s.client_key or ""))]


def check_answers(shots: list[Shot], fleet: Fleet) -> None:
    """Every answer 200, its header naming the version its body names."""
    failed = [s for s in shots if s.status != 200 or s.served_header != s.served]
    assert not failed, f"{len(failed)} failed, e.g. {failed[:3]}\n{dyno_logs(fleet)}"


def test_ninety_ten_is_ten_percent_and_a_key_gets_one_version_on_both_dynos(
    weighted_bucket: Bucket, rollout_fleet: Fleet
) -> None:
    fleet = rollout_fleet
    split = {1: 90, 2: 10}
    move(weighted_bucket, fleet, split)
    keys = [f"client-{i}" for i in range(REQUESTS)]
    keyed = fire(fleet.router_port, keys)
    drawn = fire(fleet.router_port, [None] * REQUESTS)
    check_answers(keyed + drawn, fleet)
    assert {s.dyno for s in keyed} == {f"127.0.0.1:{d.port}" for d in fleet.dynos}

    wrong = not_from_their_bucket(keyed, split)
    assert not wrong, f"{len(wrong)} keyed answers not from their bucket's version: {wrong[:3]}"
    band = tolerance(REQUESTS, 0.10)
    shares = {}
    for name, shots in (("keyed", keyed), ("random", drawn)):
        canary = sum(s.served == 2 for s in shots)
        shares[name] = f"{canary}/{len(shots)}"
        assert abs(canary - REQUESTS * 0.10) <= band, (name, canary, band)

    # The same keys straight to each dyno: the same version from both, key by key.
    sample = keys[:100]
    first, second = (fire(d.port, sample) for d in fleet.dynos)
    check_answers(first + second, fleet)
    differing = [(a, b) for a, b in zip(first, second, strict=True) if a.served != b.served]
    assert not differing, differing[:3]
    assert {s.served for s in first} == {1, 2}, "the sample should reach both versions"
    RESULTS.append(
        {
            "rollout_90_10_v2_share": shares,
            "tolerance": f"+-{band} of {REQUESTS} ({100 * band / REQUESTS:.1f} points)",
            "same_key_both_dynos": f"{len(sample)}/{len(sample)}",
        }
    )


@dataclass
class Traffic:
    """Client threads sending unpinned requests, keyed and not, through the router."""

    port: int
    keys: list[str]
    shots: list[Shot] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for index in range(CLIENTS):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)
        assert not any(t.is_alive() for t in self._threads), "a client hung"

    def _client(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            key = self.keys[n % len(self.keys)] if n % 2 == 0 else None
            shot = shoot(self.port, "unpinned", "", key)
            with self._lock:
                self.shots.append(shot)
            n += CLIENTS

    def between(self, start: float, end: float) -> list[Shot]:
        return [s for s in self.shots if s.started >= start and s.ended <= end]


def test_moving_10_to_50_to_100_under_load_fails_nothing(
    weighted_bucket: Bucket, rollout_fleet: Fleet
) -> None:
    fleet = rollout_fleet
    move(weighted_bucket, fleet, {1: 90, 2: 10})
    traffic = Traffic(fleet.router_port, [f"user-{i}" for i in range(200)]).start()
    took = {}
    try:
        time.sleep(3)
        moving_50 = time.monotonic()
        took["50"] = move(weighted_bucket, fleet, {1: 50, 2: 50})
        at_50 = time.monotonic()
        time.sleep(4)
        moving_100 = time.monotonic()
        took["100"] = move(weighted_bucket, fleet, {1: 0, 2: 100})
        at_100 = time.monotonic()
        time.sleep(3)
    finally:
        traffic.stop()
    shots = traffic.shots
    check_answers(shots, fleet)

    # Keyed requests wholly inside a window (not during a move) got their bucket's version.
    for window, split in (((0, moving_50), {1: 90, 2: 10}), ((at_50, moving_100), {1: 50, 2: 50})):
        keyed = [s for s in traffic.between(*window) if s.client_key is not None]
        assert len(keyed) > 10, (window, len(keyed))
        assert not not_from_their_bucket(keyed, split), split
    after = traffic.between(at_100, time.monotonic())
    assert after, "no traffic after the move to 100"
    assert {s.served for s in after} == {2}
    RESULTS.append(
        {
            "rollout_moves_requests": len(shots),
            "failed": 0,
            "applied_on_both_dynos_s": took,
            "v2_share": {
                "at_10": _share(traffic.between(0, moving_50)),
                "at_50": _share(traffic.between(at_50, moving_100)),
                "at_100": _share(after),
            },
        }
    )


def _share(shots: list[Shot]) -> str:
    return f"{sum(s.served == 2 for s in shots)}/{len(shots)}"


def test_metrics_compare_the_versions_on_each_dyno(
    weighted_bucket: Bucket, rollout_fleet: Fleet
) -> None:
    """Each dyno's /metrics counts Predict calls, errors and their latency per version."""
    move(weighted_bucket, rollout_fleet, {1: 50, 2: 50})
    keys: list[str | None] = [f"m-{i}" for i in range(40)]
    for dyno in rollout_fleet.dynos:
        check_answers(fire(dyno.port, keys), rollout_fleet)
        samples = metric_samples(dyno)
        for version in ("1", "2"):
            ok = {"model": MODEL, "version": version, "outcome": "ok"}
            assert samples.get(("dynoserve_gateway_version_predictions_total", _key(ok)), 0) > 0
            timed = _key({"model": MODEL, "version": version})
            name = "dynoserve_gateway_version_inference_duration_seconds_count"
            assert samples.get((name, timed), 0) > 0
        assert any(n == "dynoserve_gateway_rollout_assignments_total" for n, _ in samples)


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def metric_samples(dyno: Dyno) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of the dyno's /metrics."""
    with urllib.request.urlopen(f"{dyno.base}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, _key(sample.labels)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
