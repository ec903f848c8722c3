"""bench/paired.py: both sides of a comparison measured in turns, the medians of the rounds, the
targets and the report built on them; the limit's serving process with a real (tiny) model."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench import paired, report, targets
from devtools.processes import VENV_PYTHON, python_env
from tests.bench.test_runner import _step, sample_results


def _sequence(values: list[float], calls: list[str], name: str) -> Callable[[], float]:
    """A side that answers `values` in turn and notes when it was called."""
    remaining = iter(values)

    def measure() -> float:
        calls.append(name)
        return next(remaining)

    return measure


def test_every_other_round_measures_the_sides_in_reverse_order() -> None:
    calls: list[str] = []
    sides = {"a": _sequence([1, 2, 3], calls, "a"), "b": _sequence([4, 5, 6], calls, "b")}
    rows = paired.in_turns(sides, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert rows == [{"a": 1, "b": 4}, {"a": 2, "b": 5}, {"a": 3, "b": 6}]
    assert all(list(row) == ["a", "b"] for row in rows)


def test_one_client_takes_the_median_of_each_rounds_difference() -> None:
    calls: list[str] = []
    limit = _sequence([20.0, 30.0, 25.0], calls, "limit")
    dynoserve = _sequence([23.0, 36.5, 26.0], calls, "dynoserve")
    found = paired.one_client(limit, dynoserve, 3)
    assert [r["difference_ms"] for r in found["rounds"]] == [3.0, 6.5, 1.0]
    # the median of the differences, not the difference of the medians (26.0 - 25.0)
    assert found["median_difference_ms"] == 3.0
    assert calls.count("limit") == calls.count("dynoserve") == 3


def _stepper(ok_per_s: dict[int, list[float]], warn_at: int | None = None) -> Any:
    """A siege step by client count: the next of its ok/s figures; one warns, one fails."""
    figures = {clients: iter(values) for clients, values in ok_per_s.items()}
    asked: list[int] = []

    def step(clients: int) -> dict[str, Any]:
        asked.append(clients)
        record = _step(clients, next(figures[clients]), 100.0, failed=1 if clients == 100 else 0)
        if clients == warn_at:
            record["warning"] = "other processes used 3 CPU s"
        return record

    step.asked = asked  # type: ignore[attr-defined]
    return step


def test_overload_measures_the_sweeps_best_count_again_beside_its_most() -> None:
    sweep = [_step(1, 30, 30), _step(8, 55, 150), _step(32, 50, 600), _step(100, 45, 2000)]
    step = _stepper({8: [50.0, 48.0, 52.0], 100: [47.5, 48.0, 41.6]}, warn_at=8)
    found = paired.overload(step, sweep, 3)
    assert step.asked == [8, 100, 100, 8, 8, 100]
    assert (found["best_clients"], found["most_clients"]) == (8, 100)
    assert [r["ratio"] for r in found["rounds"]] == [0.95, 1.0, 0.8]
    assert found["median_ratio"] == 0.95
    assert found["failed"] == 3
    assert "3 CPU s" in (found["warning"] or "")


def test_overload_has_nothing_to_measure_when_the_most_clients_were_best() -> None:
    sweep = [_step(1, 30, 30), _step(100, 52, 1900)]
    step = _stepper({})
    found = paired.overload(step, sweep, 2)
    assert step.asked == []
    assert (found["rounds"], found["median_ratio"], found["failed"]) == ([], 1.0, 0)


def _paired(difference: float, ratio: float, failed: int = 0) -> dict[str, Any]:
    rounds = [{"limit_p50_ms": 20.0, "dynoserve_p50_ms": 20.0 + difference}] * 3
    over = [{"best_ok_per_s": 50.0, "most_ok_per_s": 50.0 * ratio, "ratio": ratio}] * 2
    return {
        "one_client": {
            "rounds": [{**r, "difference_ms": difference} for r in rounds],
            "median_difference_ms": difference,
        },
        "overload": {
            "best_clients": 64,
            "most_clients": 100,
            "rounds": [{**r, "failed": failed} for r in over],
            "median_ratio": ratio,
            "failed": failed,
            "warning": None,
        },
    }


def _verdicts(results: dict[str, Any]) -> dict[str, Any]:
    found = targets.evaluate(results)
    return {t["target"]: t for t in found if t["target"].startswith("paired")}


def test_paired_targets_judge_the_medians_beside_the_sweeps_own() -> None:
    results = {**sample_results(), "paired": _paired(3.5, 0.96)}
    found = _verdicts(results)
    one = found["paired rounds: 1 client p50 - limit batch-1 p50 (ms), median of 3 <= 4 ms"]
    over = found["paired rounds: ok/s at 100 clients / at 64 (the best step), median of 2 >= 0.95"]
    failed = found["paired rounds: failed requests"]
    assert (one["value"], one["met"], over["value"], over["met"]) == (3.5, True, 0.96, True)
    assert failed["met"] is True
    # the sweep's single-step targets are still judged, on the sweep's numbers
    sweep = {t["target"]: t["met"] for t in targets.evaluate(results)}
    assert sweep["100 clients: ok/s >= 0.95x best step"] is False

    missed = _verdicts({**sample_results(), "paired": _paired(4.5, 0.9, failed=2)})
    assert [t["met"] for t in missed.values()] == [False, False, False]
    assert not _verdicts(sample_results())  # no paired rounds, no paired targets


def test_report_lists_every_paired_round(tmp_path: Path) -> None:
    results = {**sample_results(), "paired": _paired(3.5, 0.96)}
    results["targets"] = targets.evaluate(results)
    table = report.write(results, tmp_path)
    assert "**paired rounds**" in table
    assert "| 3 | 20.0 | 23.5 | 3.5 |" in table
    assert "| 2 | 50.0 | 48.0 | 0.96 | 0 |" in table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny servable (written in a child: the test process never imports TensorFlow) and a
    16x16 JPEG."""
    base = tmp_path_factory.mktemp("limit")
    code = "import sys; import export.testing as t; t.write_tiny_model(sys.argv[1], 'tiny', 1)"
    subprocess.run([str(VENV_PYTHON), "-c", code, str(base)], env=python_env(), check=True)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buffer, format="JPEG")
    (base / "tiny.jpg").write_bytes(buffer.getvalue())
    return base / "tiny" / "1", base / "tiny.jpg"


@pytest.fixture
def limit(tiny: tuple[Path, Path], tmp_path: Path) -> Iterator[paired.LimitProcess]:
    process = paired.LimitProcess(*tiny, tmp_path / "limit.log")
    try:
        yield process
    finally:
        process.close()


@pytest.mark.slow
def test_the_limit_process_times_its_model_on_each_request(limit: paired.LimitProcess) -> None:
    first, second = limit.batch1_p50_ms(0.2), limit.batch1_p50_ms(0.2)
    assert 0 < first < 1000
    assert 0 < second < 1000
    limit.close()
    assert limit.proc.returncode == 0  # end of input ends it cleanly


@pytest.mark.slow
def test_a_limit_process_that_cannot_load_says_why(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model" / "1"
    with pytest.raises(RuntimeError, match=r"bench\.limit --serve ended") as raised:
        paired.LimitProcess(missing, tiny[1], tmp_path / "limit.log")
    assert "no-such-model" in str(raised.value)
