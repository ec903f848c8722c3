"""Paired rounds: two of `make bench`'s comparisons measured in turns, so the machine's drift
falls on both sides alike.

On the machines this runs on, speed moves by up to a third between minutes, and the sweep's own
comparisons set numbers measured minutes apart side by side: the limit before the stack starts
against the 1-client step after it, the largest of eight noisy steps against the 100-client one
(the largest of several noisy numbers sits above their true level). Here each round measures
both sides one right after the other, every other round in the reverse order, and the target
takes the median over rounds of each round's difference or ratio:
- one client: the SavedModel at batch 1 in a process of its own (`bench.limit --serve`, loaded
  once) against Dynoserve's keep-alive client, sequential latency p50 of each;
- overload: siege at the sweep's best client count and at its most, each after the settle; the
  best count is chosen from the sweep and measured again here, so it is not a maximum.
The sweep's single-step targets stay in the report beside these.
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import procstat, siege, steps
from bench.stack import MODEL, ROLES, wait_idle
from devtools.processes import VENV_PYTHON, python_env

T = TypeVar("T")
Step = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    step_seconds: float = 10.0
    """Each siege step of the overload rounds (the sweep's step length)."""
    one_client_rounds: int = 10
    one_client_seconds: float = 1.5
    """Per side and round: ~50 calls at MobileNet's speed here; short, so the two sides of a
    round are seconds apart (the first run's 6 rounds of 2 s differed by -4 to +8 ms)."""
    overload_rounds: int = 2


QUICK_PLAN = Plan(step_seconds=5.0, one_client_rounds=3, one_client_seconds=1.0, overload_rounds=1)


@dataclass(frozen=True)
class Stack:
    """The sweep's running Dynoserve and what its steps need."""

    pid: int
    base: str
    roots: dict[int, str]
    """Other processes to account for by role (nginx)."""
    image_urls: list[str]
    work: Path


def measure(stack: Stack, version: Path, photo: Path, sweep: Sequence[Step], plan: Plan) -> Step:
    """Right after the sweep, on its stack: the limit against one keep-alive client, then the
    best step's clients against the most clients."""
    endpoint = f"{stack.base}/v1/models/{MODEL}:predict"
    urls = siege.url_file(stack.work / "paired-urls.txt", endpoint, stack.image_urls)
    roles = procstat.roles_under({stack.pid: "dynoserve", **stack.roots}, ROLES)

    def step(clients: int) -> Step:
        settle = functools.partial(wait_idle, stack.base)
        return steps.settled_step(urls, clients, plan.step_seconds, roles, stack.work, settle)

    def one_client_p50() -> float:
        url, seconds = stack.image_urls[0], plan.one_client_seconds
        return float(steps.sequential_latency(endpoint, url, seconds, 10)["p50_ms"])

    wait_idle(stack.base)  # what the sweep's last step left
    limit = LimitProcess(version, photo, stack.work / "limit-serve.log")
    try:
        seconds = plan.one_client_seconds
        one = one_client(
            lambda: limit.batch1_p50_ms(seconds), one_client_p50, plan.one_client_rounds
        )
    finally:
        limit.close()
    print(f"paired: 1 client p50 minus the limit's, median {one['median_difference_ms']} ms")
    over = overload(step, sweep, plan.overload_rounds)
    most, best = over["most_clients"], over["best_clients"]
    print(f"paired: ok/s at {most} / at {best} clients, median {over['median_ratio']}")
    return {"plan": asdict(plan), "one_client": one, "overload": over}


def in_turns(sides: dict[str, Callable[[], T]], rounds: int) -> list[dict[str, T]]:
    """Each side once per round; odd rounds in the reverse order, so a drift within a round
    does not always fall on the side measured second."""
    rows = []
    for index in range(rounds):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        measured = {name: sides[name]() for name in order}
        rows.append({name: measured[name] for name in sides})
    return rows


def one_client(
    limit_p50: Callable[[], float], dynoserve_p50: Callable[[], float], rounds: int
) -> dict[str, Any]:
    """Per round: Dynoserve's 1-client p50 minus the limit's batch-1 p50, and their median."""
    rows = in_turns({"limit_p50_ms": limit_p50, "dynoserve_p50_ms": dynoserve_p50}, rounds)
    for row in rows:
        row["difference_ms"] = round(row["dynoserve_p50_ms"] - row["limit_p50_ms"], 2)
    median = statistics.median(row["difference_ms"] for row in rows)
    return {"rounds": rows, "median_difference_ms": round(median, 2)}


def overload(step: Callable[[int], Step], sweep: Sequence[Step], rounds: int) -> dict[str, Any]:
    """Per round: ok/s at the sweep's most clients over ok/s at its best step's clients."""
    best = max(sweep, key=lambda s: s["ok_per_s"])["clients"]
    most = max(s["clients"] for s in sweep)
    found: dict[str, Any] = {"best_clients": best, "most_clients": most}
    if best == most:  # nothing to compare: the sweep's best step is its last
        return {**found, "rounds": [], "median_ratio": 1.0, "failed": 0, "warning": None}
    rows = in_turns({"best": lambda: step(best), "most": lambda: step(most)}, rounds)
    summary = [
        {
            "best_ok_per_s": row["best"]["ok_per_s"],
            "most_ok_per_s": row["most"]["ok_per_s"],
            "ratio": round(row["most"]["ok_per_s"] / row["best"]["ok_per_s"], 3),
            "failed": row["best"]["failed"] + row["most"]["failed"],
        }
        for row in rows
    ]
    warnings = [s["warning"] for row in rows for s in row.values() if s.get("warning")]
    return {
        **found,
        "rounds": summary,
        "median_ratio": round(statistics.median(r["ratio"] for r in summary), 3),
        "failed": sum(r["failed"] for r in summary),
        "warning": "; ".join(warnings) or None,
    }


class LimitProcess:
    """`python -m bench.limit --serve`: the SavedModel loaded once in a process of its own
    (the runner never holds TensorFlow), timed at batch 1 on request."""

    def __init__(self, version: Path, image: Path, log: Path) -> None:
        argv = [str(VENV_PYTHON), "-m", "bench.limit", str(version), str(image), "--serve"]
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=python_env(),
            )
        assert self.proc.stdin is not None  # both are PIPE
        assert self.proc.stdout is not None
        self._requests, self._answers = self.proc.stdin, self.proc.stdout
        self._read()  # {"ready": true} once the model is loaded and warm

    def batch1_p50_ms(self, seconds: float) -> float:
        self._requests.write(f"{seconds}\n")
        self._requests.flush()
        return float(self._read()["p50_ms"])

    def _read(self) -> dict[str, Any]:
        line = self._answers.readline()
        if not line:
            self.close()
            tail = self.log.read_text()[-2000:]
            raise RuntimeError(f"bench.limit --serve ended ({self.proc.returncode}):\n{tail}")
        return dict(json.loads(line))

    def close(self) -> None:
        """End of input ends the process; killed if it does not end within 30 s."""
        self._requests.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._answers.close()
