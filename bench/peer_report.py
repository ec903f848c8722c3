"""The summary and the Markdown table of a `python -m bench.peer` run (bench/results/peer.json):
per system the 1-client p50, the best ok/s and at how many clients, the most clients' ok/s,
latency and failures, each the mean over the rounds; the limit; how loaded the machine was."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

SYSTEMS = ("dynoserve", "peer")
NAMES = {"dynoserve": "Dynoserve (`make run`)", "peer": "BentoML"}


def step_line(step: dict[str, Any]) -> str:
    return (
        f"{step['phase']:5s} {step['round']} {step['system']:9s} {step['clients']:3d} clients  "
        f"{step['ok_per_s']:6.1f} ok/s  p50 {step['p50_ms']} ms  p99 {step['p99_ms']} ms  "
        f"failed {step['failed']}  CPU {step['cpu_ms_per_request']} ms/request  "
        f"load {step['load_average'][0]}-{step['load_average'][1]}"
        + (f"  WARNING: {step['warning']}" if step.get("warning") else "")
    )


def summarize(step_records: Sequence[dict[str, Any]], clients: Sequence[int]) -> dict[str, Any]:
    """Per system: the 1-client p50, the best ok/s and where, the most clients' ok/s, p50 and
    p99, each the mean over the rounds; the 1-client p50 after the load steps; all failures."""
    summary: dict[str, Any] = {}
    for system in SYSTEMS:
        mine = [s for s in step_records if s["system"] == system]
        rounds = {
            c: [s for s in mine if s["clients"] == c and s["phase"] != "after"] for c in clients
        }
        if not mine:
            continue
        ok = {c: _mean(s["ok_per_s"] for s in found) for c, found in rounds.items() if found}
        best = max(ok, key=lambda c: ok[c] or 0.0)
        most = rounds[max(clients)]
        summary[system] = {
            "one_client_p50_ms": _mean(s["p50_ms"] for s in rounds.get(1, [])),
            "ok_per_s": {str(c): v for c, v in ok.items()},
            "best_ok_per_s": ok[best],
            "best_clients": best,
            "most_clients": max(clients),
            "most_clients_ok_per_s": ok.get(max(clients)),
            "most_clients_p50_ms": _mean(s["p50_ms"] for s in most),
            "most_clients_p99_ms": _mean(s["p99_ms"] for s in most),
            "one_client_after_load_p50_ms": _mean(
                s["p50_ms"] for s in mine if s["phase"] == "after"
            ),
            "failed": sum(s["failed"] for s in mine),
            "cpu_ms_per_request": {
                str(c): _mean(s["cpu_ms_per_request"] for s in found)
                for c, found in rounds.items()
                if found
            },
        }
    return summary


def _mean(values: Any) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.fmean(found), 1) if found else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def render_table(results: dict[str, Any]) -> str:
    """The Markdown table of one run: the limit, Dynoserve, BentoML; then how it was run."""
    summary, peer = results["summary"], results["settings"]["peer"]
    most = max(results["settings"]["clients"])
    lines = [
        f"| | 1 client p50 | best ok/s | {most} clients ok/s | p50 / p99 at {most} "
        f"| 1 client p50 after the load steps | failed | CPU ms per request (1 / {most} clients) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    limit = results.get("limit") or []
    if limit:
        p50 = _mean(m["jpeg"]["batch1_p50_ms"] for m in limit)
        per_s = _mean(m["jpeg"]["batch32_images_per_s"] for m in limit)
        lines.append(
            f"| the model in-process (limit) | {_ms(p50)} | {_num(per_s)} img/s (batch 32) "
            "| - | - | - | - | - |"
        )
    labels = {
        **NAMES,
        "peer": f"BentoML {results.get('peer_version', '')} (TF in-process, adaptive batching "
        f"max {peer['max_batch_size']}, max_latency_ms {peer['max_latency_ms']}, 1 worker)",
    }
    for system in SYSTEMS:
        if system not in summary:
            continue
        s = summary[system]
        cpu = s["cpu_ms_per_request"]
        lines.append(
            f"| {labels[system]} | {_ms(s['one_client_p50_ms'])} "
            f"| {_num(s['best_ok_per_s'])} (c={s['best_clients']}) "
            f"| {_num(s['most_clients_ok_per_s'])} "
            f"| {_ms(s['most_clients_p50_ms'])} / {_ms(s['most_clients_p99_ms'])} "
            f"| {_ms(s['one_client_after_load_p50_ms'])} | {s['failed']} "
            f"| {_num(cpu.get('1'))} / {_num(cpu.get(str(most)))} |"
        )
    return "\n".join([*lines, "", run_note(results)])


def run_note(results: dict[str, Any]) -> str:
    settings, step_records = results["settings"], results["steps"]
    loads = [value for s in step_records for value in s["load_average"]]
    other = [s.get("other_cpu_share", 0.0) for s in step_records]
    note = (
        f"One run, {results.get('started', '?')}, {results['machine']['cpu']} "
        f"({results['machine']['cpus']} CPUs): {settings['rounds']} rounds of "
        f"{settings['seconds']:g} s steps at {', '.join(map(str, settings['clients']))} "
        "keep-alive clients (the 1-client rounds first, then the others, then 1 client once "
        "more), the systems alternating; means over the rounds. "
        f"Load average {min(loads, default=0):g}-{max(loads, default=0):g} during the steps; "
        f"other processes took at most {100 * max(other, default=0):.0f} % of the CPUs in a step."
    )
    warned = [s for s in step_records if s.get("warning")]
    if warned:
        note += f" {len(warned)} step(s) carry a warning (see peer.json)."
    return note
