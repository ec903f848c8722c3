"""`make bench`: the original experiment, side by side, on loopback.

siege at 1..100 clients posting {"image_url": ...} against Dynoserve (supervisord.conf as
`make run` runs it, benchmark model) and the 2019-style baseline (bench/baseline.py), images from
nginx; the SavedModel in-process as the limit. Results, table and plot in bench/results/.
  python -m bench                 short steps (default 10 s)
  python -m bench --original      60 s per step, like the original experiment
  python -m bench --quick         about two minutes: 4 steps of 5 s, shorter limit runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import procstat, report, siege, steps, targets
from bench.baseline import start_baseline
from bench.images import SIZE, write_photos
from bench.nginx import start_nginx
from bench.stack import MODEL, ROLES, start_stack
from devtools.processes import REPO_ROOT, VENV_PYTHON, ManagedProcess, python_env

CLIENTS = (1, 2, 4, 8, 16, 32, 64, 100)
QUICK_CLIENTS = (1, 8, 32, 100)
IMAGES = 8
WORK = REPO_ROOT / "var" / "bench"
MODEL_DIR = REPO_ROOT / "var" / "bench-models"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per siege step")
    parser.add_argument("--original", action="store_true", help="60 s per step")
    parser.add_argument("--quick", action="store_true", help="about two minutes in all")
    parser.add_argument("--clients", help="comma-separated client counts (default 1..100)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--results", type=Path, default=report.RESULTS)
    args = parser.parse_args(argv)
    if args.original:
        args.seconds = 60.0
    if args.quick:
        args.seconds = min(args.seconds, 5.0)
    default = QUICK_CLIENTS if args.quick else CLIENTS
    args.clients = [int(c) for c in args.clients.split(",")] if args.clients else list(default)
    return args


def ensure_model() -> Path:
    """The benchmark model's version folder, exported on first use (about a minute)."""
    version = MODEL_DIR / MODEL / "1"
    if not (version / "saved_model.pb").exists():
        argv = [str(VENV_PYTHON), "-m", "export.benchmodel", "--export-dir", str(MODEL_DIR)]
        subprocess.run(argv, env=python_env(), check=True)
    return version


def measure_limit(version: Path, image: Path, seconds: float) -> dict[str, Any]:
    argv = [str(VENV_PYTHON), "-m", "bench.limit", str(version), str(image)]
    argv += ["--seconds", str(seconds)]
    done = subprocess.run(argv, env=python_env(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench.limit failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def warm_up(endpoint: str, image_urls: Sequence[str]) -> None:
    """A few sequential requests so first-call costs (kernels, pools) stay out of step 1."""
    for url in list(image_urls) * 2:
        steps.sequential_latency(endpoint, url, 0, at_least=1)


def run_system(
    name: str,
    proc: ManagedProcess,
    endpoint: str,
    image_urls: list[str],
    args: argparse.Namespace,
    roots: dict[int, str],
    rules: Sequence[tuple[str, str]],
    work: Path,
) -> dict[str, Any]:
    """Warm-up, the 1-client keep-alive latency, then one siege step per client count."""
    warm_up(endpoint, image_urls)
    one = steps.sequential_latency(endpoint, image_urls[0], min(args.seconds, 10.0))
    print(f"{name}: 1 keep-alive client p50 {one['p50_ms']} ms ({one['requests']} requests)")
    urls = siege.url_file(work / f"{name}-urls.txt", endpoint, image_urls)
    roles = procstat.roles_under({proc.pid: name, **roots}, rules)
    results = []
    for clients in args.clients:
        record = steps.run_step(urls, clients, args.seconds, procstat.Sampler(roles), work)
        results.append(record)
        print(
            f"{name}: {clients:3d} clients  {record['ok_per_s']:7.1f} ok/s  "
            f"mean {record['mean_ms']} ms  p50 {record['p50_ms']}  p99 {record['p99_ms']}  "
            f"failed {record['failures'] or 0}"
        )
        if record.get("warning"):
            print(f"  WARNING: {record['warning']}")
    return {"one_client": one, "steps": results}


def header(args: argparse.Namespace, photos: Sequence[Path], limit: dict) -> dict[str, Any]:
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "seconds": args.seconds,
            "clients": args.clients,
            "images": len(photos),
            "image_size": "x".join(map(str, SIZE)),
            "image_kb": round(sum(p.stat().st_size for p in photos) / len(photos) / 1000),
        },
        "limit": limit,
    }


def measure_systems(
    args: argparse.Namespace, work: Path, photos: Sequence[Path], results: dict[str, Any]
) -> None:
    """nginx for the images, then Dynoserve and the baseline in turn (never both running)."""
    with ExitStack() as stack:
        nginx, image_base = start_nginx(photos[0].parent, work / "nginx")
        stack.callback(nginx.stop)
        image_urls = [f"{image_base}/{p.name}" for p in photos]
        roots = {nginx.pid: "nginx"}
        dyno, base = start_stack(MODEL_DIR, work / "dynoserve")
        try:
            endpoint = f"{base}/v1/models/{MODEL}:predict"
            results["dynoserve"] = run_system(
                "dynoserve", dyno, endpoint, image_urls, args, roots, ROLES, work
            )
        finally:
            dyno.stop(timeout=40)  # supervisord stops its programs one by one
        if args.skip_baseline:
            return
        baseline, base = start_baseline(work)
        try:
            rules = [("gunicorn", "baseline (gunicorn)")]
            results["baseline"] = run_system(
                "baseline", baseline, f"{base}/predict", image_urls, args, roots, rules, work
            )
        finally:
            baseline.stop(timeout=30)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = WORK / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True)
    print(f"logs and siege output in {work}")
    version = ensure_model()
    photos = write_photos(WORK / "photos", IMAGES)
    limit = measure_limit(version, photos[0], min(args.seconds, 3.0 if args.quick else 8.0))
    print(f"limit: {limit}")
    results = header(args, photos, limit)
    measure_systems(args, work, photos, results)
    results["targets"] = targets.evaluate(results)
    results["warnings"] = [
        f"{key}, {s['clients']} clients: {s['warning']}"
        for key in ("dynoserve", "baseline")
        for s in results.get(key, {}).get("steps", [])
        if s.get("warning")
    ]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    table = report.write(results, args.results)
    print(table)
    if args.results == report.RESULTS and report.update_readme(table):
        print(f"updated the latest run in {report.README}")
    for t in results["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        ratio = f" ({t['ratio']}x)" if t["ratio"] is not None else ""
        print(f"target {verdict:12s} {t['target']}: {t['value']} vs {t['bound']}{ratio}")
    print(f"wrote {args.results}/{report.JSON_NAME}, {report.TABLE_NAME}, {report.PLOT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
