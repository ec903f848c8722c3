"""Turn bench/results/*.json into bench/results/summary.md (the README's table) and a plot.

Run: python -m bench.report
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def serving_rows(serving: dict[str, Any]) -> list[str]:
    targets = serving["targets"]
    met = {True: "met", False: "missed"}
    rows = [
        f"| raw signature, batch 1 (in-process) | p50 {targets['raw_batch1_p50_ms']} ms | |",
        f"| raw signature, batch 32 (in-process) | | "
        f"{targets['raw_batch32_images_per_s']} images/s |",
    ]
    for mode, title in (("grpc_no_batching", "no batching"), ("grpc_batching", "batching")):
        for callers, stats in serving[mode].items():
            rows.append(
                f"| gRPC Predict, {callers} callers, {title} | p50 {stats['p50_ms']} ms, "
                f"p99 {stats['p99_ms']} ms | {stats['requests_per_s']} images/s |"
            )
    rows.append(
        f"| target: 1 caller p50 <= raw batch 1 + 1.5 ms | {targets['one_caller_p50_ms']} ms vs "
        f"{targets['one_caller_budget_ms']} ms: {met[targets['one_caller_met']]} | |"
    )
    rows.append(
        f"| target: 32 callers batched >= 0.9x raw batch 32 | | "
        f"{targets['batched_32_callers_per_s']} vs {targets['batched_32_floor_per_s']} images/s: "
        f"{met[targets['batched_32_met']]} |"
    )
    return rows


def gateway_rows(gateway: dict[str, Any]) -> list[str]:
    rows = []
    for name, stats in gateway.get("sequential_latency", {}).items():
        rows.append(
            f"| {name.replace('_', ' ')}, sequential | p50 {stats['p50_ms']} ms, "
            f"p99 {stats['p99_ms']} ms | |"
        )
    for path, stats in gateway.get("gateway_overhead_paired_ms", {}).items():
        own = gateway.get("gateway_own_time_ms", {}).get(path, {}).get("p50_ms", "?")
        rows.append(
            f"| added by the gateway ({path.removeprefix('gateway_')}), paired with direct gRPC "
            f"| p50 {stats['p50_ms']} ms (own work {own} ms) | |"
        )
    for key, title in (("siege", "siege"), ("siege_past_the_in_flight_bound", "siege, overload")):
        load = gateway.get(key)
        if load:
            rate = load.get("siege", {}).get("transaction_rate", "")
            shed = f", {load['shed_total']:.0f} shed with 503" if load.get("shed_total") else ""
            rows.append(
                f"| gateway under {title} -c {load.get('concurrency')} | RSS high-water "
                f"{load.get('rss_mb_high_water')} MB | {rate} requests/s{shed} |"
            )
    return rows


def table(serving: dict[str, Any] | None, gateway: dict[str, Any] | None) -> str:
    lines = ["| measurement | latency / memory | throughput |", "|---|---|---|"]
    if serving:
        lines += serving_rows(serving)
    if gateway:
        lines += gateway_rows(gateway)
    return "\n".join(lines) + "\n"


def plot(serving: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, title in (("grpc_no_batching", "no batching"), ("grpc_batching", "batching")):
        callers = [int(c) for c in serving[mode]]
        left.plot(callers, [serving[mode][str(c)]["p50_ms"] for c in callers], "o-", label=title)
        right.plot(
            callers, [serving[mode][str(c)]["requests_per_s"] for c in callers], "o-", label=title
        )
    raw32 = serving["targets"]["raw_batch32_images_per_s"]
    right.axhline(raw32, ls="--", c="gray")
    right.annotate("raw signature, batch 32", (1, raw32))
    left.set(xscale="log", xlabel="concurrent callers", ylabel="p50 latency (ms)")
    right.set(xscale="log", xlabel="concurrent callers", ylabel="images/s")
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.suptitle("gRPC Predict on the local model server, MobileNet v1 224 (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.parse_args(argv)
    serving, gateway = load("serving"), load("gateway")
    if serving is None and gateway is None:
        print("no results in bench/results: run `make bench`", file=sys.stderr)
        return 1
    summary = RESULTS / "summary.md"
    summary.write_text(table(serving, gateway))
    print(summary.read_text())
    if serving:
        plot(serving, RESULTS / "serving.png")
        print(f"wrote {summary} and {RESULTS / 'serving.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
