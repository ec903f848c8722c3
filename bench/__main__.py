"""`make bench`: the original experiment, side by side, on loopback; then the internet.

siege at 1..100 clients posting {"image_url": ...} against Dynoserve (supervisord.conf as
`make run` runs it, benchmark model) and the 2019-style baseline (bench/baseline.py), images from
nginx; the SavedModel in-process as the limit. Then, against the same Dynoserve stack: image
hosts 0, 100 and 500 ms away (internet mode), one client flooding slow URLs while others upload
(flood), 64 clients uploading 6 MB bodies (uploads; the gateway's peak RSS). The sweep's stack
has the answer cache off (its photos repeat); the cache part asks them again on a stack with it
on (bench/cache.py). Results, table and plot in bench/results/.
  python -m bench                 short steps (default 10 s)
  python -m bench --original      60 s per step, like the original experiment
  python -m bench --quick         about three minutes: shorter steps and fewer of them
  python -m bench --only internet,flood,uploads   some parts (the README is left alone)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cache, internet, paired, procstat, report, siege, steps, targets, uploads
from bench.baseline import start_baseline
from bench.images import SIZE, write_photos
from bench.nginx import start_nginx
from bench.slowhost import start_slowhost
from bench.stack import MODEL, ROLES, start_stack, wait_idle
from devtools.dynostack import Dyno
from devtools.processes import REPO_ROOT, VENV_PYTHON, ManagedProcess, python_env

CLIENTS = (1, 2, 4, 8, 16, 32, 64, 100)
QUICK_CLIENTS = (1, 8, 32, 100)
IMAGES = 8
WORK = REPO_ROOT / "var" / "bench"
MODEL_DIR = REPO_ROOT / "var" / "bench-models"
PARTS = ("limit", "sweep", "baseline", "internet", "flood", "uploads", "cache")
HOSTILE = ("internet", "flood", "uploads")  # the parts run against Dynoserve after its sweep


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
    parser.add_argument("--internet-clients", help="comma-separated (default 32,64,128)")
    parser.add_argument("--only", help=f"comma-separated parts of {','.join(PARTS)}")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--results", type=Path, default=report.RESULTS)
    args = parser.parse_args(argv)
    if args.original:
        args.seconds = 60.0
    if args.quick:
        args.seconds = min(args.seconds, 5.0)
    args.clients = _counts(args.clients) or list(QUICK_CLIENTS if args.quick else CLIENTS)
    far = internet.QUICK_CLIENTS if args.quick else internet.CLIENTS
    args.internet_clients = _counts(args.internet_clients) or list(far)
    args.parts = set(args.only.split(",")) if args.only else set(PARTS)
    if args.parts - set(PARTS):
        parser.error(f"unknown parts {sorted(args.parts - set(PARTS))}; choose from {PARTS}")
    if args.skip_baseline:
        args.parts.discard("baseline")
    return args


def _counts(text: str | None) -> list[int]:
    return [int(c) for c in text.split(",")] if text else []


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


def answered_once(endpoint: str, url: str) -> float:
    """Settle a system without a busy gauge: seconds until one request, queued behind whatever
    the previous step left, is answered."""
    started = time.monotonic()
    steps.sequential_latency(endpoint, url, 0, at_least=1)
    return round(time.monotonic() - started, 1)


def warm_batches(endpoint: str, image_urls: Sequence[str], work: Path) -> None:
    """32 clients for a few seconds, not recorded: the model server's first large batches
    (new shapes) are slow, and without the sweep nothing else has run them yet."""
    folder = work / "warm-up"
    folder.mkdir(exist_ok=True)
    siege.run(siege.url_file(folder / "urls.txt", endpoint, image_urls), 32, 5, folder)


def run_system(
    name: str,
    proc: ManagedProcess | Dyno,
    endpoint: str,
    image_urls: list[str],
    args: argparse.Namespace,
    roots: dict[int, str],
    rules: Sequence[tuple[str, str]],
    work: Path,
    settle: Callable[[], float],
) -> dict[str, Any]:
    """Warm-up, the 1-client keep-alive latency, then one siege step per client count, each
    after `settle` (the system has finished what the previous step's clients left behind)."""
    warm_up(endpoint, image_urls)
    one = steps.sequential_latency(endpoint, image_urls[0], min(args.seconds, 10.0))
    print(f"{name}: 1 keep-alive client p50 {one['p50_ms']} ms ({one['requests']} requests)")
    urls = siege.url_file(work / f"{name}-urls.txt", endpoint, image_urls)
    roles = procstat.roles_under({proc.pid: name, **roots}, rules)
    results = []
    for clients in args.clients:
        record = steps.settled_step(urls, clients, args.seconds, roles, work, settle)
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
            "internet_clients": args.internet_clients,
            "parts": sorted(args.parts),
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
        if args.parts & {"sweep", *HOSTILE}:
            dyno, base = start_stack(MODEL_DIR, work / "dynoserve")
            try:
                endpoint = f"{base}/v1/models/{MODEL}:predict"
                if "sweep" in args.parts:
                    with timed(results, "sweep"):
                        results["dynoserve"] = run_system(
                            "dynoserve",
                            dyno,
                            endpoint,
                            image_urls,
                            args,
                            roots,
                            ROLES,
                            work,
                            functools.partial(wait_idle, base),
                        )
                    if "limit" in args.parts:
                        with timed(results, "paired"):
                            results["paired"] = paired.measure(
                                paired.Stack(dyno.pid, base, roots, image_urls, work),
                                MODEL_DIR / MODEL / "1",
                                photos[0],
                                results["dynoserve"]["steps"],
                                paired.QUICK_PLAN if args.quick else paired.Plan(args.seconds),
                            )
                else:
                    warm_up(endpoint, image_urls)
                    warm_batches(endpoint, image_urls, work)
                run_hostile(args, work, photos, (dyno, base), endpoint, results)
            finally:
                dyno.stop(timeout=40)  # supervisord stops its programs one by one
        if "cache" in args.parts:  # the answer cache on a stack of its own (the sweep's is off)
            with timed(results, "cache"):
                step = cache.cache_step(MODEL_DIR, work, image_urls, args.seconds, roots)
                results["cache"] = step
            print("\n".join(cache.cache_lines(results["cache"], results.get("dynoserve"))))
        if "baseline" not in args.parts:
            return
        baseline, base = start_baseline(work)
        try:
            rules = [("gunicorn", "baseline (gunicorn)")]
            with timed(results, "baseline"):
                endpoint = f"{base}/predict"
                results["baseline"] = run_system(
                    "baseline",
                    baseline,
                    endpoint,
                    image_urls,
                    args,
                    roots,
                    rules,
                    work,
                    functools.partial(answered_once, endpoint, image_urls[0]),
                )
        finally:
            baseline.stop(timeout=30)


@contextlib.contextmanager
def timed(results: dict[str, Any], part: str) -> Iterator[None]:
    """Wall seconds of one part of the run, kept in results["part_seconds"]."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = round(time.monotonic() - started, 1)
        results.setdefault("part_seconds", {})[part] = seconds
        print(f"{part}: {seconds} s")


def run_hostile(
    args: argparse.Namespace,
    work: Path,
    photos: Sequence[Path],
    stack: tuple[Dyno, str],
    endpoint: str,
    results: dict[str, Any],
) -> None:
    """Internet mode and the flood (images from bench/slowhost.py), then the uploads: last,
    because the memory they make the gateway take is rarely given back to the system."""
    dyno, base = stack
    settle = functools.partial(wait_idle, base)
    if args.parts & {"internet", "flood"}:
        host, host_base = start_slowhost(photos[0].parent, work / "slowhost.log", internet.JITTER)
        try:
            rules = [*ROLES, ("-m bench.slowhost", "image host")]
            roles = procstat.roles_under({dyno.pid: "dynoserve", host.pid: "image host"}, rules)
            far = FarHosts(endpoint, host_base, functools.partial(procstat.Sampler, roles), settle)
            run_far_hosts(args, work, photos, far, results)
        finally:
            host.stop()
    if "uploads" in args.parts:
        photo = uploads.write_upload_photo(WORK / "uploads")
        plan = uploads.QUICK_UPLOADS if args.quick else uploads.UploadPlan()
        roles = procstat.roles_under({dyno.pid: "dynoserve"}, ROLES)
        with timed(results, "uploads"):
            results["uploads"] = uploads.uploads(endpoint, photo, plan, roles, settle)
        print_uploads(results["uploads"])


@dataclass(frozen=True)
class FarHosts:
    """What the internet and flood steps share: the stack's endpoint, the slow image host,
    per-step accounting and the wait for an idle gateway."""

    endpoint: str
    host_base: str
    sampling: internet.Sampling
    settle: internet.Settle


def run_far_hosts(
    args: argparse.Namespace,
    work: Path,
    photos: Sequence[Path],
    far: FarHosts,
    results: dict[str, Any],
) -> None:
    if "internet" in args.parts:
        with timed(results, "internet"):
            results["internet"] = internet.internet_mode(
                far.endpoint,
                far.host_base,
                photos,
                args.internet_clients,
                args.seconds,
                far.sampling,
                far.settle,
                work,
            )
    if "flood" in args.parts:
        plan = internet.QUICK_FLOOD if args.quick else internet.FloodPlan()
        with timed(results, "flood"):
            results["flood"] = internet.flood(
                far.endpoint, far.host_base, photos[0], plan, far.sampling, far.settle
            )
        print_flood(results["flood"])


def print_flood(flood: dict[str, Any]) -> None:
    for key, title in (("calm", "uploaders alone"), ("uploaders", "uploaders in the flood")):
        r = flood[key]
        print(
            f"flood: {title}: {r['ok_per_s']} ok/s  p50 {r['p50_ms']}  p99 {r['p99_ms']}  "
            f"failed {r['failed']} {r['failures'] or ''}"
        )
    r = flood["flood"]
    print(f"flood: the slow-URL client: {r['ok']} ok, p50 {r['p50_ms']}, failed {r['failures']}")


def print_uploads(result: dict[str, Any]) -> None:
    print(
        f"uploads: {result['plan']['clients']} clients x {result['body_mb']} MB bodies: "
        f"{result['ok_per_s']} ok/s, p50 {result['p50_ms']} ms, statuses "
        f"{ {'200': result['ok'], **result['failures']} }, gateway RSS "
        f"{result['rss_mb_before'].get('gateway')} -> {result['gateway_peak_rss_mb']} MB peak"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = WORK / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True)
    print(f"logs and siege output in {work}")
    version = ensure_model()
    photos = write_photos(WORK / "photos", IMAGES)
    results = header(args, photos, {})
    if "limit" in args.parts:
        seconds = min(args.seconds, 3.0 if args.quick else 8.0)
        with timed(results, "limit"):
            results["limit"] = measure_limit(version, photos[0], seconds)
        print(f"limit: {results['limit']}")
    measure_systems(args, work, photos, results)
    results["targets"] = targets.evaluate(results)
    results["warnings"] = [
        f"{key}, {s['clients']} clients{_delay(s)}: {s['warning']}"
        for key in ("dynoserve", "baseline", "internet")
        for s in results.get(key, {}).get("steps", [])
        if s.get("warning")
    ] + [
        f"{key}: {results[key]['warning']}"
        for key in ("flood", "uploads")
        if key in results and results[key].get("warning")
    ]
    return results


def _delay(step: dict[str, Any]) -> str:
    return f", image host {step['delay_ms']} ms away" if "delay_ms" in step else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    table = report.write(results, args.results)
    print(table)
    complete = args.parts == set(PARTS)
    if complete and args.results == report.RESULTS and report.update_readme(table):
        print(f"updated the latest run in {report.README}")
    for t in results["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        ratio = f" ({t['ratio']}x)" if t["ratio"] is not None else ""
        ratio += " (other processes took the CPUs: not to be quoted)" if t.get("noisy") else ""
        print(f"target {verdict:12s} {t['target']}: {t['value']} vs {t['bound']}{ratio}")
    print(f"wrote {args.results}/{report.JSON_NAME}, {report.TABLE_NAME}, {report.PLOT_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
