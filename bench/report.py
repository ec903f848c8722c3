"""bench/results/: the run's JSON, a Markdown table (the README's) and the plot.

Run alone to redraw from the last JSON: python -m bench.report [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import targets
from bench.cache import cache_lines

RESULTS = Path(__file__).resolve().parent / "results"
README = RESULTS.parent.parent / "README.md"
# `make bench` rewrites the README's latest table between these lines.
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
JSON_NAME, TABLE_NAME, PLOT_NAME = "bench.json", "bench.md", "bench.png"
SYSTEMS = (("dynoserve", "Dynoserve"), ("baseline", "baseline (2019 Flask + gunicorn + Keras)"))


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _per_role(values: dict[str, Any]) -> str:
    return ", ".join(f"{role} {_fmt(v)}" for role, v in sorted(values.items()) if v)


def steps_table(steps: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| clients | ok/s | mean ms | p50 ms | p95 ms | p99 ms | failed (by status) "
        "| CPU s per 1,000 requests | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        failed = _failures(s)
        warn = " ⚠" if s.get("warning") else ""
        lines.append(
            f"| {s['clients']}{warn} | {_fmt(s['ok_per_s'])} | {_fmt(s['mean_ms'])} "
            f"| {_fmt(s['p50_ms'])} | {_fmt(s['p95_ms'])} | {_fmt(s['p99_ms'])} | {failed} "
            f"| {_per_role(s['cpu_s_per_1000_requests'])} | {_per_role(s['rss_mb'])} |"
        )
    return lines


def limit_lines(limit: dict[str, Any]) -> list[str]:
    lines = ["| input | batch 1 p50 ms | batch 32 images/s |", "|---|---|---|"]
    for kind, title in (("jpeg", "JPEG bytes (serving_default)"), ("float", "float pixels")):
        if kind in limit:
            row = limit[kind]
            lines.append(f"| {title} | {row['batch1_p50_ms']} | {row['batch32_images_per_s']} |")
    return lines


def paired_lines(found: dict[str, Any]) -> list[str]:
    """Each round of bench/paired.py's comparisons, measured in turns."""
    one, over = found["one_client"], found["overload"]
    lines = [
        "**paired rounds** (after the sweep, both sides measured one right after the other, "
        "every other round in reverse order): the limit's batch-1 p50 and one keep-alive "
        "client's p50 through Dynoserve; siege at the sweep's best step's clients and at its "
        "most clients",
        "",
        "| round | limit p50 ms | Dynoserve p50 ms | difference ms |",
        "|---|---|---|---|",
    ]
    for index, row in enumerate(one["rounds"], 1):
        lines.append(
            f"| {index} | {row['limit_p50_ms']} | {row['dynoserve_p50_ms']} "
            f"| {row['difference_ms']} |"
        )
    if not over["rounds"]:
        return [
            *lines,
            "",
            f"The sweep's best step was its most clients' ({over['most_clients']}).",
        ]
    lines += [
        "",
        f"| round | ok/s at {over['best_clients']} clients | ok/s at {over['most_clients']} "
        "| ratio | failed |",
        "|---|---|---|---|---|",
    ]
    for index, row in enumerate(over["rounds"], 1):
        lines.append(
            f"| {index} | {row['best_ok_per_s']} | {row['most_ok_per_s']} | {row['ratio']} "
            f"| {row['failed']} |"
        )
    return lines


def target_lines(targets: Sequence[dict[str, Any]]) -> list[str]:
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    lines = ["| target | measured | bound | measured / bound | |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(
            f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['bound'])} "
            f"| {_fmt(t.get('ratio'))} | {verdict[t['met']]}{' ⚠' if t.get('noisy') else ''} |"
        )
    return lines


def internet_lines(internet: dict[str, Any]) -> list[str]:
    jitter = round(100 * internet.get("jitter", 0))
    needed = internet.get("clients_needed", {})
    lines = [
        f"**internet mode**: Dynoserve, siege posting `image_url`s whose host "
        f"(bench/slowhost.py) answers after 0, 100 or 500 ms (±{jitter} %). Clients to keep "
        "the best loopback throughput by Little's law (best 0 ms ok/s × (its mean latency + "
        "delay)): " + ", ".join(f"{d} ms: {n}" for d, n in needed.items()),
        "",
        "| host delay ms | clients | ok/s | mean ms | p50 ms | p99 ms | failed (by status) "
        "| gateway CPU s per 1,000 | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(internet.get("steps", []), key=lambda s: (s["delay_ms"], s["clients"]))
    for s in ordered:
        warn = " ⚠" if s.get("warning") else ""
        lines.append(
            f"| {s['delay_ms']} | {s['clients']}{warn} | {_fmt(s['ok_per_s'])} "
            f"| {_fmt(s['mean_ms'])} | {_fmt(s['p50_ms'])} | {_fmt(s['p99_ms'])} "
            f"| {_failures(s)} | {_fmt(s['cpu_s_per_1000_requests'].get('gateway'))} "
            f"| {_per_role(s['rss_mb'])} |"
        )
    return lines


def flood_lines(flood: dict[str, Any]) -> list[str]:
    plan, warn = flood["plan"], " ⚠" if flood.get("warning") else ""
    lines = [
        f"**slow-URL flood**: one client keeps {plan['requests']} requests in flight whose image "
        f"host sends the body one byte per 0.5 s for {plan['dribble_s']:g} s, while "
        f"{plan['uploaders']} other clients upload their image as base64 JSON "
        f"({plan['seconds']:g} s; the same uploaders alone for {plan['calm_s']:g} s first)",
        "",
        "| clients | ok/s | p50 ms | p99 ms | failed (by status) |",
        "|---|---|---|---|---|",
    ]
    rows = (
        ("calm", f"{plan['uploaders']} uploaders, alone"),
        ("uploaders", f"{plan['uploaders']} uploaders, during the flood" + warn),
        ("flood", f"the flooding client ({plan['requests']} in flight)"),
    )
    for key, title in rows:
        r = flood[key]
        lines.append(
            f"| {title} | {_fmt(r['ok_per_s'])} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} "
            f"| {_failures(r)} |"
        )
    return lines


def upload_lines(uploads: dict[str, Any]) -> list[str]:
    plan, warn = uploads["plan"], " ⚠" if uploads.get("warning") else ""
    before = uploads.get("rss_mb_before", {}).get("gateway")
    return [
        f"**uploads**: {plan['clients']} clients posting a {uploads['photo_mb']:g} MB JPEG as "
        f"base64 JSON ({uploads['body_mb']:g} MB bodies) for {plan['seconds']:g} s",
        "",
        "| ok/s | p50 ms | p99 ms | answers by status | gateway RSS MB before → peak |",
        "|---|---|---|---|---|",
        f"| {_fmt(uploads['ok_per_s'])}{warn} | {_fmt(uploads['p50_ms'])} "
        f"| {_fmt(uploads['p99_ms'])} "
        f"| {_statuses(uploads)} | {_fmt(before)} → {_fmt(uploads['gateway_peak_rss_mb'])} |",
    ]


def _failures(record: dict[str, Any]) -> str:
    """Failures by status, or by status and the gateway's error code where the client kept it."""
    counts = record.get("failure_codes") or record["failures"]
    return ", ".join(f"{n}× {k}" for k, n in counts.items()) or "0"


def _statuses(record: dict[str, Any]) -> str:
    counts = {"200": record["ok"], **(record.get("failure_codes") or record["failures"])}
    return ", ".join(f"{n}× {k}" for k, n in counts.items() if n)


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    out = [
        f"Run {results['started']} on {m['cpu']} ({m['cpus']} CPUs), {s['seconds']:g} s per "
        f'step, siege posting {{"image_url": ...}} for {s["images"]} photo-like '
        f"{s['image_size']} JPEGs of ~{s['image_kb']} KB served by nginx on loopback. "
        "Latency percentiles: from siege's per-request lines (10 ms steps); "
        "1-client p50: a keep-alive client, millisecond-precise.",
        "",
    ]
    for key, title in SYSTEMS:
        if key in results:
            one = results[key].get("one_client", {})
            out += [f"**{title}** (1 keep-alive client: p50 {_fmt(one.get('p50_ms'))} ms)", ""]
            out += [*steps_table(results[key]["steps"]), ""]
    if results.get("limit"):
        out += ["**limit**: the SavedModel in-process, no server", ""]
        out += [*limit_lines(results["limit"]), ""]
    if results.get("paired"):
        out += [*paired_lines(results["paired"]), ""]
    if results.get("internet"):
        out += [*internet_lines(results["internet"]), ""]
    if results.get("flood"):
        out += [*flood_lines(results["flood"]), ""]
    if results.get("uploads"):
        out += [*upload_lines(results["uploads"]), ""]
    if results.get("cache"):
        out += [*cache_lines(results["cache"], results.get("dynoserve")), ""]
    timings = results.get("part_seconds", {})
    if timings:
        out += ["Wall time per part: " + ", ".join(f"{k} {v:g} s" for k, v in timings.items()), ""]
    out += ["**targets** (ratios within this run)", "", *target_lines(results["targets"])]
    warnings = [f"- {w}" for w in results.get("warnings", [])]
    if warnings:
        out += ["", "⚠ other processes used the CPU:", *warnings]
    return "\n".join(out) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency and throughput against clients, like the original experiment's chart; a third
    panel for the internet mode when the run has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    internet = results.get("internet", {}).get("steps", [])
    sweep = any(results.get(key, {}).get("steps") for key, _ in SYSTEMS)
    panels = (2 if sweep else 0) + (1 if internet else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(5.5 * max(1, panels), 4.2), squeeze=False)
    if sweep:
        plot_sweep(axes[0][0], axes[0][1], results)
    if internet:
        plot_internet(axes[0][-1], internet)
    for axis in axes[0]:
        if axis.has_data():
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle(f"siege, MobileNet v1 224 (40 classes), {results['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(left: Any, right: Any, results: dict[str, Any]) -> None:
    for key, title in SYSTEMS:
        steps = results.get(key, {}).get("steps", [])
        clients = [s["clients"] for s in steps]
        left.plot(clients, [s["mean_ms"] for s in steps], "o-", label=f"{title}, mean")
        right.plot(clients, [s["ok_per_s"] for s in steps], "o-", label=title)
    limit = results.get("limit", {})
    if "jpeg" in limit:
        left.axhline(limit["jpeg"]["batch1_p50_ms"], ls="--", c="gray", label="limit: batch 1 JPEG")
        right.axhline(
            limit["jpeg"]["batch32_images_per_s"], ls="--", c="gray", label="limit: batch 32 JPEG"
        )
    if "float" in limit:
        right.axhline(
            limit["float"]["batch32_images_per_s"], ls=":", c="gray", label="limit: batch 32 float"
        )
    left.set(xscale="log", yscale="log", xlabel="clients", ylabel="latency (ms)")
    right.set(xscale="log", xlabel="clients", ylabel="answered requests/s")


def plot_internet(axis: Any, steps: Sequence[dict[str, Any]]) -> None:
    """Dynoserve's throughput against clients, one line per image-host delay."""
    for delay in sorted({s["delay_ms"] for s in steps}):
        mine = sorted((s for s in steps if s["delay_ms"] == delay), key=lambda s: s["clients"])
        axis.plot(
            [s["clients"] for s in mine],
            [s["ok_per_s"] for s in mine],
            "o-",
            label=f"Dynoserve, image host {delay} ms away",
        )
    clients = sorted({s["clients"] for s in steps})
    top = max((s["ok_per_s"] for s in steps), default=0) or 1
    axis.set(xscale="log", xlabel="clients", ylabel="answered requests/s", ylim=(0, 1.3 * top))
    axis.set_xticks(clients, [str(c) for c in clients])
    axis.minorticks_off()
    axis.set_title("internet mode: the image host's delay", fontsize=9)


def write(results: dict[str, Any], folder: Path = RESULTS) -> str:
    """Write the JSON, the Markdown table and the plot into `folder`; return the table."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / (JSON_NAME + ".tmp")
    staging.write_text(json.dumps(results, indent=2) + "\n")
    staging.replace(folder / JSON_NAME)
    table = markdown(results)
    (folder / TABLE_NAME).write_text(table)
    plot(results, folder / PLOT_NAME)
    return table


def update_readme(table: str, readme: Path = README) -> bool:
    """Put `table` between the README's benchmark markers; False when it has none."""
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    head = text[: start + len(README_BEGIN)]
    readme.write_text(f"{head}\n{table.rstrip()}\n{text[end:]}")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    source = args.results / JSON_NAME
    if not source.exists():
        print(f"no {source}: run `make bench`", file=sys.stderr)
        return 1
    results = json.loads(source.read_text())
    results["targets"] = targets.evaluate(results)  # the current rules, on the stored numbers
    print(write(results, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
