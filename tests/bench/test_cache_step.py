"""The bench's answer-cache step in the report: cached figures beside the uncached sweep's, and
the sweep's own stack with the cache off (it must measure the model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import cache, report, targets
from bench.stack import stack_env
from tests.bench.test_runner import _step, sample_results


def cache_result(all_hits: bool = True) -> dict[str, Any]:
    return {
        "cache_bytes": cache.CACHE_BYTES,
        "first": ["miss"] * 8,
        "one_client": {"requests": 900, "p50_ms": 4.2},
        "step": _step(cache.CLIENTS, 700, 45),
        "metrics": {"hits": 9000.0, "misses": 8.0 if all_hits else 20.0},
        "all_hits": all_hits,
    }


def test_the_report_sets_cached_beside_uncached(tmp_path: Path) -> None:
    results = sample_results()
    results["dynoserve"]["steps"].append(_step(cache.CLIENTS, 80, 400))
    results["cache"] = cache_result()
    results["targets"] = targets.evaluate(results)
    table = report.write(results, tmp_path)
    assert "**answer cache**" in table
    assert "every request after each photo's first was a hit" in table
    assert f"| cached (hits) | 4.2 | {cache.CLIENTS} | 700 | 45 | 45 |" in table
    assert f"| uncached (the sweep) | 18.0 | {cache.CLIENTS} | 80 | 400 | 400 |" in table


def test_a_step_that_was_not_all_hits_says_so() -> None:
    lines = cache.cache_lines(cache_result(all_hits=False), None)
    assert "20 misses for 8 photos, 9000 hits" in lines[0]
    assert not any("uncached" in line for line in lines)


def test_the_sweep_runs_with_the_cache_off(tmp_path: Path) -> None:
    assert stack_env(tmp_path, tmp_path, 8080)["DYNOSERVE_ANSWER_CACHE_BYTES"] == "0"
