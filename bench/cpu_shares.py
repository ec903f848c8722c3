"""TF Serving's thread counts on a shared CPU, measured: the tool behind the launcher's rule
(docs/sizing.md, "Threads on a shared CPU").

A Heroku Standard dyno shares its host's CPUs by weight (cgroup `cpu.shares`), with no quota to
read, while `nproc` shows the host's count; a container with a CFS quota gets a hard cap
instead. This script builds both on this machine with cgroup v1's `cpu` controller (root only)
and measures the local model server (benchmark MobileNet, 640x480 JPEGs over gRPC) under
each thread setting:

  scenarios  alone        no cgroup limit, nothing else started (the host's own load stays)
             shares-1n    cpu.shares 1024 against a sibling cgroup of 1024 that runs one busy
                          loop per CPU: the dyno's fair share is half the host
             shares-3n    the same against a sibling of 3072: a quarter of the host
             quota-1      cpu.cfs_quota_us = 1 CPU, nothing else started
             quota-0.5    cpu.cfs_quota_us = 0.5 CPU
  settings   intra/inter-op threads / batch threads, e.g. "2/2/1" (default: 1 and nproc threads
             with 1 and 2 batch threads, and 4 x nproc threads, standing in for a big shared
             host's `nproc`, with 1)
  loads      c1: 1 caller, batch 1, closed loop; c8: 8 callers, batch 1; b32: 1 caller, batch 32
  figures    images/s, latency p50/p99, and the server's CPU time per image (/proc/PID/stat):
             on a machine other people use, wall-clock figures move with their load, while
             CPU per image says what a given share of CPU buys

The experiment's cgroup weighs 4 x 1024 per CPU against the host's other processes (1024 each).
Every setting runs as its own server for the whole run; a measurement moves that server (and
this process, whose threads are the callers: a dyno's gateway shares the dyno's CPU too) into
the dyno cgroup, loads it, and moves both out again. Rounds repeat every (scenario, setting)
pair in a rotated order, so drift in the host's load falls on all settings alike; the summary
gives each figure's median over rounds and each setting's throughput as a ratio to the
reference setting (intra = inter = nproc, 1 batch thread: what the launcher passed before)
measured in the same round and scenario.

Run (as root; ~6 s per pair and load at the defaults, ~25 min for 3 rounds):
  .venv/bin/python -m bench.cpu_shares [--rounds 3] [--seconds 4] [--settings 1/1/1,2/2/1]
      [--scenarios alone,quota-1]
Results: bench/results/cpu_shares.json (every measurement) and a Markdown table on stdout.
Not part of `make bench`: it needs root and takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serving_bench import ensure_model, percentiles, sample_jpeg
from devtools.net import free_port, port_open
from devtools.processes import REPO_ROOT, VENV_PYTHON, ManagedProcess, python_env

RESULTS = REPO_ROOT / "bench" / "results" / "cpu_shares.json"
LOGS = REPO_ROOT / "var" / "bench" / "cpu_shares"
CPU_V1 = Path("/sys/fs/cgroup/cpu")
MODEL = "mobilenet"
HOG_LIFETIME_S = 900  # a busy loop left behind by a crash still ends by itself
HOG = f"import time\nend = time.monotonic() + {HOG_LIFETIME_S}\nwhile time.monotonic() < end: pass"
PERIOD_US = 100_000
EXPERIMENT_SHARES = 4 * 1024 * len(os.sched_getaffinity(0))
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
NPROC = len(os.sched_getaffinity(0))
SCENARIOS = ("alone", "shares-1n", "shares-3n", "quota-1", "quota-0.5")
LOADS = ("c1", "c8", "b32")


@dataclass(frozen=True)
class Setting:
    """One server's thread counts: TensorFlow's intra- and inter-op pools, the batch threads."""

    intra: int
    inter: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> Setting:
        intra, inter, batch = (int(part) for part in text.split("/"))
        return cls(intra, inter, batch)

    @property
    def name(self) -> str:
        return f"{self.intra}/{self.inter}/{self.batch}"


DEFAULT_SETTINGS = (
    *(Setting(threads, threads, batch) for threads in (1, NPROC) for batch in (1, 2)),
    Setting(4 * NPROC, 4 * NPROC, 1),
)
REFERENCE = Setting(NPROC, NPROC, 1)


class CpuCgroups:
    """A private subtree of cgroup v1's `cpu` hierarchy: dyno, neighbour and parked groups."""

    def __init__(self, root: Path = CPU_V1) -> None:
        if not (root / "cpu.shares").exists():
            raise SystemExit(f"needs cgroup v1's cpu controller at {root} (and root)")
        self.base = root / f"dynoserve-cpu-bench-{os.getpid()}"
        self.origin = self._own_group(root)
        for name in ("dyno", "neighbour", "parked"):
            (self.base / name).mkdir(parents=True)
        # Other users' processes in the root group weigh 1024 each, task by task; the whole
        # experiment weighs as much as four busy threads per CPU, so their load moves its
        # share less without taking the machine from them.
        (self.base / "cpu.shares").write_text(str(EXPERIMENT_SHARES))
        (self.group("parked") / "cpu.shares").write_text("2")  # idle servers wait here

    @staticmethod
    def _own_group(root: Path) -> Path:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(","):
                return root / path.strip("/")
        return root

    def group(self, name: str) -> Path:
        return self.base / name

    def move(self, pid: int, name: str) -> None:
        """Every thread of `pid` into the group (v1's cgroup.procs moves the thread group)."""
        (self.group(name) / "cgroup.procs").write_text(str(pid))

    def configure(self, scenario: str) -> None:
        """The dyno's and the neighbour's weights and the dyno's quota for `scenario`."""
        neighbour = 3072 if scenario == "shares-3n" else 1024
        quota = {"quota-1": 1.0, "quota-0.5": 0.5}.get(scenario)
        (self.group("dyno") / "cpu.shares").write_text("1024")
        (self.group("neighbour") / "cpu.shares").write_text(str(neighbour))
        (self.group("dyno") / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        limit = -1 if quota is None else int(quota * PERIOD_US)
        (self.group("dyno") / "cpu.cfs_quota_us").write_text(str(limit))

    def throttled_s(self) -> float:
        """Seconds the dyno group spent throttled by its quota so far (cpu.stat)."""
        stat = dict(
            line.split() for line in (self.group("dyno") / "cpu.stat").read_text().splitlines()
        )
        return int(stat.get("throttled_time", "0")) / 1e9

    def remove(self) -> None:
        """Move anything left back to where this process started, then delete the subtree."""
        for name in ("dyno", "neighbour", "parked"):
            for pid in (self.group(name) / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # the process may have exited meanwhile
                    (self.origin / "cgroup.procs").write_text(pid)
            self.group(name).rmdir()
        self.base.rmdir()


@contextlib.contextmanager
def neighbours(cgroups: CpuCgroups, scenario: str) -> Iterator[None]:
    """One busy loop per CPU in the neighbour group while a shares scenario runs."""
    if not scenario.startswith("shares"):
        yield
        return
    hogs = [
        ManagedProcess([sys.executable, "-c", HOG], LOGS / "hog.log").start() for _ in range(NPROC)
    ]
    try:
        for hog in hogs:
            cgroups.move(hog.pid, "neighbour")
        time.sleep(0.5)  # let the scheduler see the neighbour's demand
        yield
    finally:
        for hog in hogs:
            hog.stop(5)


class Server:
    """The local model server with one Setting, its gRPC stub, a Predict of batch 1 and 32."""

    def __init__(self, setting: Setting, base: Path, image: bytes) -> None:
        import grpc

        from gateway._proto.dynoserve.tf_serving import services_pb2_grpc

        self.setting = setting
        self.port = free_port()
        batching = LOGS / f"batching-{setting.name.replace('/', '-')}.config"
        shipped = (REPO_ROOT / "serving" / "batching.config").read_text().splitlines()
        kept = [line for line in shipped if not line.startswith("num_batch_threads")]
        batching.write_text("\n".join([*kept, f"num_batch_threads {{ value: {setting.batch} }}\n"]))
        argv = [str(VENV_PYTHON), "-m", "serving.local", f"--port={self.port}"]
        argv += [f"--rest_api_port={free_port()}", f"--model_name={MODEL}"]
        argv += [f"--model_base_path={base}", "--enable_batching"]
        argv += [f"--batching_parameters_file={batching}"]
        argv += [f"--tensorflow_intra_op_parallelism={setting.intra}"]
        argv += [f"--tensorflow_inter_op_parallelism={setting.inter}"]
        log = LOGS / f"server-{setting.name.replace('/', '-')}.log"
        self.process = ManagedProcess(argv, log, env=python_env())
        self.process.start_ready(lambda: port_open(self.port), timeout=600)
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stub = services_pb2_grpc.PredictionServiceStub(self.channel)
        self.requests = {1: predict_request(image, 1), 32: predict_request(image, 32)}
        for _ in range(3):  # the first calls trace the signature for each batch shape
            self.predict(1)
            self.predict(32)

    def predict(self, batch: int) -> None:
        self.stub.Predict(self.requests[batch], timeout=120)

    def stop(self) -> None:
        self.channel.close()
        self.process.stop(60)


def predict_request(image: bytes, batch: int) -> Any:
    """A Predict of `batch` copies of the JPEG, built as the gateway builds its requests."""
    from gateway._proto.dynoserve.tf_serving import model_pb2, predict_pb2
    from gateway.client import string_tensor

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
    request.inputs["images"].CopyFrom(string_tensor([image] * batch))
    return request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def closed_loop(server: Server, callers: int, batch: int, seconds: float) -> dict[str, Any]:
    """`callers` threads sending Predict back to back for `seconds`: images/s and latency."""
    import grpc

    samples: list[list[float]] = [[] for _ in range(callers)]
    errors: list[str] = []
    barrier = threading.Barrier(callers + 1)
    deadline: list[float] = []

    def caller(index: int) -> None:
        barrier.wait()
        while time.perf_counter() < deadline[0] or len(samples[index]) < 2:
            started = time.perf_counter()
            try:
                server.predict(batch)
            except grpc.RpcError as exc:  # counted and reported; this caller stops
                errors.append(str(exc.code()))
                return
            samples[index].append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    began, cpu_before = time.perf_counter(), cpu_seconds(server.process.pid)
    deadline.append(began + seconds)
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    images = batch * sum(len(per_caller) for per_caller in samples)
    cpu = cpu_seconds(server.process.pid) - cpu_before
    return {
        **percentiles([ms for per_caller in samples for ms in per_caller]),
        "images_per_s": round(images / elapsed, 2),
        # CPU the server spent per image: what a fixed share of CPU buys, whatever the
        # other users of the machine did meanwhile (wall-clock figures move with them).
        "server_cpu_ms_per_image": round(1000 * cpu / images, 1) if images else None,
        "errors": len(errors),
    }


# callers, images per request, and run length in units of --seconds (a batch of 32 takes
# seconds on a small share, so it runs longer to count more than a couple of calls).
LOAD_SHAPES = {"c1": (1, 1, 1), "c8": (8, 1, 1), "b32": (1, 32, 2)}


def measure_pair(
    cgroups: CpuCgroups, server: Server, seconds: float, loads: Sequence[str]
) -> dict[str, Any]:
    """Every load against `server` with it and this process inside the dyno group."""
    cgroups.move(server.process.pid, "dyno")
    cgroups.move(os.getpid(), "dyno")
    try:
        results: dict[str, Any] = {}
        for load in loads:
            callers, batch, length = LOAD_SHAPES[load]
            throttled = cgroups.throttled_s()
            results[load] = closed_loop(server, callers, batch, seconds * length)
            results[load]["throttled_s"] = round(cgroups.throttled_s() - throttled, 3)
        return results
    finally:
        cgroups.move(os.getpid(), "parked")
        cgroups.move(server.process.pid, "parked")


def run_rounds(
    cgroups: CpuCgroups,
    servers: Sequence[Server],
    scenarios: Sequence[str],
    rounds: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """Rounds of every (scenario, setting) pair; the settings' order rotates each round."""
    records: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for scenario in scenarios:
            cgroups.configure(scenario)
            shift = round_index % len(servers)
            order = [*servers[shift:], *servers[:shift]]
            with neighbours(cgroups, scenario):
                for server in order:
                    result = measure_pair(cgroups, server, seconds, LOADS)
                    record = {"round": round_index, "scenario": scenario}
                    record |= {"setting": server.setting.name, "loads": result}
                    record["load_average"] = os.getloadavg()[0]
                    records.append(record)
                    print(json.dumps(record), flush=True)
    return records


def summarize(records: Sequence[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per scenario, setting and load: medians over rounds, and throughput vs `reference`."""
    by_key = {(r["round"], r["scenario"], r["setting"]): r["loads"] for r in records}
    rows = []
    for scenario, setting in dict.fromkeys((r["scenario"], r["setting"]) for r in records):
        rounds = sorted({r["round"] for r in records if r["scenario"] == scenario})
        row: dict[str, Any] = {"scenario": scenario, "setting": setting}
        for load in LOADS:
            runs = [by_key[(i, scenario, setting)][load] for i in rounds]
            ratios = [
                run["images_per_s"] / ref[load]["images_per_s"]
                for i, run in zip(rounds, runs, strict=True)
                if (ref := by_key.get((i, scenario, reference))) and ref[load]["images_per_s"]
            ]
            row[load] = {
                "images_per_s_min": min(run["images_per_s"] for run in runs),
                "images_per_s_median": statistics.median(run["images_per_s"] for run in runs),
                "p50_ms": statistics.median(run["p50_ms"] for run in runs),
                "p99_ms": statistics.median(run["p99_ms"] for run in runs),
                "cpu_ms_per_image": statistics.median(
                    run["server_cpu_ms_per_image"] or 0.0 for run in runs
                ),
                "vs_reference": round(statistics.median(ratios), 2) if ratios else None,
                "errors": sum(run["errors"] for run in runs),
            }
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as the table docs/sizing.md carries."""
    head = "| scenario | intra/inter/batch threads |"
    rule = "|---|---|"
    for load in LOADS:
        head += f" {load} images/s (vs ref) | p50 / p99 ms | CPU ms/image |"
        rule += "---|---|---|"
    lines = [head, rule]
    for row in rows:
        line = f"| {row['scenario']} | {row['setting']} |"
        for load in LOADS:
            cell = row[load]
            line += f" {cell['images_per_s_median']:.1f} ({cell['vs_reference']}) |"
            line += f" {cell['p50_ms']:.0f} / {cell['p99_ms']:.0f} |"
            line += f" {cell['cpu_ms_per_image']:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_shares", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "var" / "bench-models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per load and pair")
    parser.add_argument("--settings", default=",".join(s.name for s in DEFAULT_SETTINGS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.settings = [Setting.parse(text) for text in args.settings.split(",")]
    args.scenarios = args.scenarios.split(",")
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    base, image = ensure_model(args.model_dir), sample_jpeg()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    cgroups = CpuCgroups()
    servers: list[Server] = []
    try:
        for setting in args.settings:
            servers.append(Server(setting, base, image))
            cgroups.move(servers[-1].process.pid, "parked")
        records = run_rounds(cgroups, servers, args.scenarios, args.rounds, args.seconds)
    finally:
        cgroups.remove()  # first: a server parked at a tiny weight would take ages to stop
        for server in servers:
            server.stop()
    reference = REFERENCE.name if REFERENCE in args.settings else args.settings[0].name
    rows = summarize(records, reference)
    result = {
        "machine": {"nproc": NPROC, "load_average_at_end": os.getloadavg()},
        "reference_setting": reference,
        "seconds_per_load": args.seconds,
        "records": records,
        "summary": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"wrote {args.output}; logs in {LOGS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
