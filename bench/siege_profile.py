"""Where the CPU per answered request goes under siege, per process and per kind of thread, with
client counts taking turns: the tool behind docs/performance.md on siege at 100 clients.

siege runs as `make bench` runs it (bench/siege.py: `connection: close`, a new TCP connection per
request, 8 photo-like JPEGs by URL from nginx) against `make run`'s stack, for a fixed time per
step. Around each step: user and system time of every process (/proc/PID/stat; siege's from this
process's children), of the machine (/proc/stat), and of every gateway and model server thread
(bench/threadstat.py: time on a CPU, time runnable but waiting for one, context switches),
grouped by kind (waitress's event loop, waitress workers, fetch pool, grpc threads, ...). The
processes' own counters say what work the step did: images fetched, Predicts the model server
ran, requests abandoned when siege stopped. Steps wait for an idle gateway first (--no-settle:
not, as `make bench`'s sweep does not), and take turns in rounds, so a change in the machine's
load falls on all alike (--alternate-order: every other round runs the client counts in
reverse, so a drift within a round does too); the summary is each figure's median over rounds.

--margin S: measure only the step's middle (S seconds left out at each end; answers counted by
the gateway): the steady state, without the requests in flight when siege starts and stops.
--variant NAME:VAR=VALUE[,VAR=VALUE]: another stack with other gateway settings, in turns with
the default one (an A/B in one run). Per function, py-spy does not help here: with the gateway's
~560 threads `py-spy record` (even --gil --nonblocking at 100 Hz) falls seconds behind and
slows the gateway, and `py-spy dump` takes ~1 s under load and sees almost no running thread;
`perf record -g -p PID` shows the native and kernel side (docs/performance.md).

Run (as root: py-spy names the threads; without it they are grouped by /proc name only):
  .venv/bin/python -m bench.siege_profile [--clients 32,100] [--rounds 3] [--seconds 12]
      [--margin 3] [--tiny] [--variant NAME:VAR=VALUE] [--no-settle] [--alternate-order]
Results: bench/results/siege_profile.json and a Markdown table (medians) on stdout;
`--table FILE` prints that table again from a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat, siege, threadstat, walltime
from bench.images import write_photos
from bench.nginx import start_nginx
from bench.overhead import TINY, tiny_model
from bench.serving_bench import ensure_model
from bench.stack import MODEL, ROLES, start_stack, wait_idle
from devtools.dynostack import Dyno, descendants
from devtools.processes import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results" / "siege_profile.json"
WORK = REPO_ROOT / "var" / "bench" / "siege-profile"
MODEL_DIR = REPO_ROOT / "var" / "bench-models"
IMAGES = 8
THREADED = ("gateway", "model server")  # processes whose threads are read
# The processes' own counters of work done: (name, metric, label filter, gateway or server).
COUNTERS = (
    ("fetched", "dynoserve_gateway_fetch_duration_seconds", "", "gateway"),
    ("predicted", "dynoserve_gateway_inference_duration_seconds", "", "gateway"),
    ("server_predicts", ":tensorflow:serving:request_latency", 'API="predict"', "server"),
    ("batches", ":tensorflow:serving:runtime_latency", 'API="Predict"', "server"),
)
ANSWERED = 'route="/v1/models/<model>:predict"&status="200"'  # the gateway's 200s, "&": and
_MACHINE = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass
class Target:
    """One stack under test and what is needed to read it."""

    name: str
    dyno: Dyno
    base: str
    urls: Path
    roles: procstat.Roles
    pids: dict[str, int] = field(default_factory=dict)
    names: dict[str, dict[int, str]] = field(default_factory=dict)
    metrics: tuple[str, str] = ("", "")

    def refresh_names(self) -> None:
        """Thread names from py-spy (between steps: a dump costs ~0.2 s of CPU)."""
        for role, pid in self.pids.items():
            found = {tid: t.name for tid, t in threadstat.dump(pid).items()}
            self.names[role] = {**self.names.get(role, {}), **found}


def process_ticks(roles: dict[int, str]) -> dict[str, list[int]]:
    """[user, system] clock ticks per role, summed over its live processes."""
    found: dict[str, list[int]] = {}
    for pid, role in roles.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        row = found.setdefault(role, [0, 0])
        row[0] += int(fields[11])
        row[1] += int(fields[12])
    return found


def machine_ticks() -> dict[str, int]:
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    return dict(zip(_MACHINE, map(int, values), strict=True))


def counters(target: Target) -> dict[str, float]:
    gateway, server = target.metrics
    pages = {"gateway": walltime.page(gateway), "server": walltime.page(server)}
    found = {name: walltime.sums(pages[side], m, label)[1] for name, m, label, side in COUNTERS}
    found["abandoned"] = _counter(pages["gateway"], "dynoserve_gateway_abandoned_requests_total")
    found["answered"] = _counter(pages["gateway"], "dynoserve_gateway_requests_total", ANSWERED)
    found["images"] = walltime.sums(
        pages["server"], ":tensorflow:serving:batching_session:processed_batch_size", ""
    )[0]
    return found


def _counter(page: str, metric: str, label: str = "") -> float:
    """A counter's value summed over its series whose labels contain every part of `label`."""
    total = 0.0
    for line in page.splitlines():
        name, _, value = line.rpartition(" ")
        if name.split("{", 1)[0] == metric and all(part in name for part in label.split("&")):
            total += float(value)
    return total


def snapshot(target: Target) -> dict[str, Any]:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # siege once it has ended
    live = [p for p in descendants(os.getpid()) if procstat.cmdline(p).startswith("siege")]
    running = process_ticks(dict.fromkeys(live, "siege")).get("siege", [0, 0])
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "time": time.monotonic(),
        "counters": counters(target),
        "machine": machine_ticks(),
        "processes": process_ticks(target.roles()),
        "siege": [
            children.ru_utime + running[0] / procstat.TICKS,
            children.ru_stime + running[1] / procstat.TICKS,
        ],
        "runner": [own.ru_utime, own.ru_stime],
        "threads": {role: threadstat.read_threads(pid) for role, pid in target.pids.items()},
    }


def difference(
    before: dict[str, Any], after: dict[str, Any], ok: int, names: dict[str, dict[int, str]]
) -> dict[str, Any]:
    """Per answered request: each process's user and system ms, the machine's, each thread
    kind's ms on and waiting for a CPU and context switches; and the work counters' growth."""
    per = 1000 / ok if ok else 0.0
    tick = 1 / procstat.TICKS
    processes = {}
    for role, (user, system) in after["processes"].items():
        old = before["processes"].get(role, [0, 0])
        processes[role] = _user_system((user - old[0]) * tick, (system - old[1]) * tick, per)
    for role in ("siege", "runner"):
        old, new = before[role], after[role]
        processes[role] = _user_system(new[0] - old[0], new[1] - old[1], per)
    machine = {k: (after["machine"][k] - before["machine"][k]) * tick for k in _MACHINE}
    threads = {}
    for role in THREADED:
        kinds = threadstat.by_kind(
            before["threads"].get(role, {}), after["threads"].get(role, {}), names.get(role, {})
        )
        threads[role] = {kind: _per_ok(row, per) for kind, row in kinds.items()}
    work = {k: after["counters"][k] - before["counters"][k] for k in after["counters"]}
    return {
        "wall_s": round(after["time"] - before["time"], 2),
        "work": work,
        "processes_ms": processes,
        "machine_ms": {k: round(v * per, 2) for k, v in machine.items()},
        "threads": threads,
    }


def _user_system(user_s: float, system_s: float, per: float) -> dict[str, float]:
    return {
        "user": round(user_s * per, 2),
        "system": round(system_s * per, 2),
        "total": round((user_s + system_s) * per, 2),
    }


def _per_ok(row: dict[str, int], per: float) -> dict[str, float]:
    """A kind's counters per answered request (ms; switches as counts)."""
    ticks = row["system_ticks"]
    return {
        "cpu_ms": round(row["on_cpu_ns"] / 1e9 * per, 3),
        "wait_ms": round(row["wait_ns"] / 1e9 * per, 3),
        "voluntary": round(row["voluntary"] * per / 1000, 2),
        "involuntary": round(row["involuntary"] * per / 1000, 2),
        "system_share": round(row["system_ticks"] / max(1, row["user_ticks"] + ticks), 2),
        "threads": row["threads"],
        "threads_ran": row["threads_ran"],
    }


def run_step(
    target: Target,
    clients: int,
    seconds: float,
    work: Path,
    settle: bool,
    margin: float = 0.0,
) -> dict[str, Any]:
    """siege at `clients` for `seconds` against `target`, measured over the whole step as
    `make bench` measures it, or with `margin` over the step less `margin` seconds at each end
    (its steady state: answers counted by the gateway, not siege)."""
    waited = wait_idle(target.base) if settle else None
    load = os.getloadavg()[0]
    if margin:
        result, before, after = _inside(target, clients, seconds, work, margin)
        ok = int(after["counters"]["answered"] - before["counters"]["answered"])
        window = after["time"] - before["time"]
    else:
        before = snapshot(target)
        result = siege.run(target.urls, clients, seconds, work)
        after = snapshot(target)
        ok, window = result.ok, result.elapsed_s
    record: dict[str, Any] = {
        "variant": target.name,
        "clients": clients,
        "settled_s": waited,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(window, 2),
        "ok": ok,
        "siege_ok": result.ok,
        "failures": result.failures,
        "ok_per_s": round(ok / window, 2) if window else 0.0,
        **difference(before, after, ok, target.names),
    }
    record["derived"] = derived(record)
    target.refresh_names()
    return record


def _inside(
    target: Target, clients: int, seconds: float, work: Path, margin: float
) -> tuple[siege.SiegeResult, dict[str, Any], dict[str, Any]]:
    """siege in the background; snapshots `margin` seconds after its start and before its end."""
    done: list[siege.SiegeResult] = []
    thread = threading.Thread(
        target=lambda: done.append(siege.run(target.urls, clients, seconds, work)), daemon=True
    )
    thread.start()
    time.sleep(margin)
    before = snapshot(target)
    time.sleep(max(0.0, seconds - 2 * margin))
    after = snapshot(target)
    thread.join()
    if not done:
        raise RuntimeError("siege failed; see its output in " + str(work))
    return done[0], before, after


def summarize(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of every per-request figure, per variant and client count (steps
    outside the rounds, such as the profiled ones of earlier versions, left out)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        if "round" in step:
            groups.setdefault(f"{step['variant']} c{step['clients']}", []).append(step)
    return {key: _median_tree(group) for key, group in groups.items()}


def _median_tree(records: Sequence[Any]) -> Any:
    """The median of each number found at the same place in every record (dicts walked)."""
    first = records[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(r, dict) and k in r for r in records)]
        return {k: _median_tree([r[k] for r in records]) for k in keys}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    numbers = [r for r in records if isinstance(r, int | float) and not isinstance(r, bool)]
    return round(statistics.median(numbers), 3)


def derived(record: dict[str, Any]) -> dict[str, Any]:
    """CPU per unit of work done rather than per answer: the gateway's per image fetched, the
    model server's per image predicted. Per answer, a step also pays for the requests siege
    abandons at its end (fetched and checked, never answered: up to one per client) and for
    what a previous step left running."""
    work, cpu = record["work"], record["processes_ms"]
    ok = record["ok"]
    found: dict[str, Any] = {}
    if work.get("fetched") and ok:
        found["fetched_per_ok"] = round(work["fetched"] / ok, 3)
        found["gateway_ms_per_fetch"] = round(cpu["gateway"]["total"] * ok / work["fetched"], 2)
    if work.get("images"):
        server = cpu["model server"]["total"] * ok / work["images"]
        found["server_ms_per_image"] = round(server, 2)
    if work.get("batches"):
        found["images_per_batch"] = round(work["images"] / work["batches"], 2)
    return found


def start_target(
    name: str, env: dict[str, str], tiny: bool, image_urls: list[str], nginx_pid: int
) -> Target:
    model_dir, model = (tiny_model().parent, TINY) if tiny else (MODEL_DIR, MODEL)
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    dyno, base = start_stack(model_dir, folder / "dynoserve", env)
    endpoint = f"{base}/v1/models/{model}:predict"
    roles = procstat.roles_under({dyno.pid: "dynoserve", nginx_pid: "nginx"}, ROLES)
    urls = siege.url_file(folder / "urls.txt", endpoint, image_urls)
    target = Target(name, dyno, base, urls, roles)
    found = roles()
    target.pids = {role: next(p for p, r in found.items() if r == role) for role in THREADED}
    rest = _environ(dyno.pid, "DYNOSERVE_MODEL_SERVER_REST_PORT")
    target.metrics = (f"{base}/metrics", f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics")
    return target


def _environ(pid: int, name: str) -> str:
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(name.encode() + b"="):
            return entry.split(b"=", 1)[1].decode()
    raise RuntimeError(f"the stack's environment has no {name}")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'NAME:VAR=VALUE,VAR=VALUE' -> (NAME, {VAR: VALUE})."""
    name, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    if not name or not env or any(not k.startswith("DYNOSERVE_") for k in env):
        raise argparse.ArgumentTypeError(f"expected NAME:DYNOSERVE_VAR=VALUE[,...], got {text!r}")
    return name, env


def order(clients: Sequence[int], index: int, alternate: bool) -> list[int]:
    """The client counts of round `index` (from 0): as given, or reversed in odd rounds."""
    return list(clients[::-1] if alternate and index % 2 else clients)


def run(args: argparse.Namespace) -> dict[str, Any]:
    photos = write_photos(REPO_ROOT / "var" / "bench" / "photos", IMAGES)
    if not args.tiny:
        ensure_model(MODEL_DIR)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["settings"] = {k: v for k, v in vars(args).items() if k != "results"}
    steps: list[dict[str, Any]] = []
    with ExitStack() as stack:
        nginx, image_base = start_nginx(photos[0].parent, WORK / "nginx")
        stack.callback(nginx.stop)
        image_urls = [f"{image_base}/{p.name}" for p in photos]
        targets = []
        for name, env in [("default", {}), *args.variant]:
            target = start_target(name, env, args.tiny, image_urls, nginx.pid)
            stack.callback(target.dyno.stop, 40)
            siege.run(target.urls, 32, 5, WORK / name)  # warm-up: first batches, pools
            target.refresh_names()
            targets.append(target)
        for index in range(args.rounds):
            turn = targets[index % len(targets) :] + targets[: index % len(targets)]
            for clients in order(args.clients, index, args.alternate_order):
                for target in turn:
                    step = run_step(
                        target,
                        clients,
                        args.seconds,
                        WORK / target.name,
                        args.settle,
                        margin=args.margin,
                    )
                    steps.append(step | {"round": index + 1})
                    print(line(step), flush=True)
    results["steps"] = steps
    results["summary"] = summarize(steps)
    return results


def line(step: dict[str, Any]) -> str:
    cpu = step["processes_ms"]
    gateway = step["threads"]["gateway"]
    kinds = ", ".join(f"{k} {v['cpu_ms']:.2f}" for k, v in sorted(gateway.items()) if v["cpu_ms"])
    return (
        f"{step['variant']} c{step['clients']}: {step['ok_per_s']} ok/s, load "
        f"{step['load_average'][0]}; ms/ok gateway {cpu['gateway']['total']} (sys "
        f"{cpu['gateway']['system']}), model server {cpu['model server']['total']}, siege "
        f"{cpu['siege']['total']}, nginx {cpu.get('nginx', {}).get('total')}; "
        f"{step['derived']}; gateway threads: {kinds}"
    )


GATEWAY_KINDS = ("MainThread", "waitress workers", "fetch pool", "fetch watchdog")


def table(summary: dict[str, Any]) -> list[str]:
    """Markdown: per variant and client count (medians), throughput, CPU ms per answered
    request per process, the gateway's per image fetched, and its thread kinds."""
    rows = [
        "| step | ok/s | fetched/ok | gateway ms/ok (sys) | per fetch | model server ms/ok "
        "| per image | siege | nginx | gateway threads: ms/ok, voluntary + involuntary "
        "switches/ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, step in summary.items():
        cpu, found = step["processes_ms"], step.get("derived", {})
        kinds = step["threads"]["gateway"]
        shown = [k for k in (*GATEWAY_KINDS, "grpc core (native)") if k in kinds]
        threads = "; ".join(
            f"{k} {kinds[k]['cpu_ms']:.2f}, {kinds[k]['voluntary']:g} + {kinds[k]['involuntary']:g}"
            for k in shown
        )
        rows.append(
            f"| {key} | {step['ok_per_s']} | {found.get('fetched_per_ok')} "
            f"| {cpu['gateway']['total']} ({cpu['gateway']['system']}) "
            f"| {found.get('gateway_ms_per_fetch')} | {cpu['model server']['total']} "
            f"| {found.get('server_ms_per_image')} | {cpu['siege']['total']} "
            f"| {cpu.get('nginx', {}).get('total')} | {threads} |"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.siege_profile", description=__doc__)
    parser.add_argument("--clients", default="32,100", help="client counts taking turns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0, help="per step")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument(
        "--no-settle", dest="settle", action="store_false", help="no wait for an idle gateway"
    )
    parser.add_argument(
        "--alternate-order", action="store_true", help="every other round in reverse order"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="measure only the step's middle: seconds left out at each end (answers then "
        "counted by the gateway)",
    )
    parser.add_argument("--table", type=Path, help="only print the table of a results file")
    args = parser.parse_args(argv)
    if args.table:
        print("\n".join(table(json.loads(args.table.read_text())["summary"])))
        return 0
    args.clients = [int(c) for c in args.clients.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    results = run(args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results["summary"])))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
