"""Where a request's CPU goes, per process: the tool behind docs/performance.md.

CPU time is what this measures, not latency: on a shared machine a request's wall time moves
with everybody's load, its CPU seconds hardly do. For each client count, a fixed number of
requests runs against `make run`'s stack (bench/stack.py, images from nginx by URL, every URL
unique so no cache answers) and each process's user + system time (/proc/PID/stat) is read
before and after: CPU ms per request per process, by thread name as well (/proc/PID/task), and
optionally a py-spy profile of each process over the same requests. Then Predict straight to
the model server over gRPC (1 and 32 callers) against the SavedModel signature called
in-process: the model server's own cost per Predict.

Run (as root for --profile: py-spy attaches to the processes):
  .venv/bin/python -m bench.overhead [--requests 400] [--clients 1,32,100] [--profile]
Results: bench/results/overhead.json, profiles in var/bench/overhead/, a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import procstat, walltime
from bench.images import write_photos
from bench.nginx import start_nginx
from bench.serving_bench import ensure_model
from bench.stack import MODEL, ROLES, start_stack
from devtools.net import free_port, port_open
from devtools.processes import REPO_ROOT, VENV_PYTHON, ManagedProcess, python_env

RESULTS = REPO_ROOT / "bench" / "results" / "overhead.json"
WORK = REPO_ROOT / "var" / "bench" / "overhead"
MODEL_DIR = REPO_ROOT / "var" / "bench-models"
PY_SPY = REPO_ROOT / ".venv" / "bin" / "py-spy"
CLIENTS = (1, 32, 100)
TINY = "tiny"
TOTAL = "(process)"
RATE = 500  # py-spy samples per second
IMAGES = 8
BATCH = 32
# Every request must reach the model: the answer cache (keyed by image bytes) would answer
# the benchmark's few photos itself.
NO_CACHE = {"DYNOSERVE_ANSWER_CACHE_BYTES": "0"}


def cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (digits dropped: pool threads count together) of `pid`, from
    each thread's schedstat (nanoseconds on the CPU). Not from its stat: the kernel scales each
    thread's utime + stime to clock ticks on its own, so hundreds of threads that each run less
    than a tick per step lose time there (the gateway's 560 live threads summed 15 % short of
    the process's own total over 4 s in which no thread started or ended)."""
    found: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        found[re.sub(r"[-_]?\d+$", "", name)] += on_cpu_ns / 1e9
    return dict(found)


class Processes:
    """The stack's gateway and model server, found by role, and their CPU snapshots."""

    def __init__(self, root: int) -> None:
        self.root = root  # its environment names the stack's ports
        roles = procstat.roles_under({root: "dynoserve"}, ROLES)()
        self.pids = {
            role: next(p for p, r in roles.items() if r == role)
            for role in ("gateway", "model server")
        }

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds by live thread name, and the process's own total under
        TOTAL (/proc/PID/stat also counts threads that have exited since)."""
        return {
            role: {**cpu_by_thread(pid), TOTAL: procstat.cpu_seconds(pid) or 0.0}
            for role, pid in self.pids.items()
        }


def per_request(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], count: int
) -> dict[str, Any]:
    """CPU ms per request for each process, in all and by thread name (the largest first;
    "(exited threads)" is what threads that ended during the step used, give or take the
    difference between the process's tick count and its threads' schedstat)."""
    out: dict[str, Any] = {}
    for role, threads in after.items():
        used = {n: s - before[role].get(n, 0.0) for n, s in threads.items()}
        total = used.pop(TOTAL)
        used["(exited threads)"] = total - sum(used.values())
        by_thread = {n: round(1000 * s / count, 2) for n, s in used.items() if s > 0.0005}
        out[role] = {
            "cpu_ms": round(1000 * total / count, 2),
            "threads": dict(sorted(by_thread.items(), key=lambda kv: -kv[1])[:8]),
        }
    return out


def _run(threads: list[threading.Thread], go: threading.Event) -> float:
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


class HttpClients:
    """Keep-alive HTTP clients posting {"image_url": ...} for a unique URL each time."""

    def __init__(self, endpoint: str, image_urls: Sequence[str]) -> None:
        import http.client

        self.parts = urllib.parse.urlsplit(endpoint)
        self.urls = image_urls
        self.local = threading.local()
        self.connection = http.client.HTTPConnection
        self.failures: Counter[str] = Counter()

    def __call__(self, n: int) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self.connection(
                self.parts.hostname or "", self.parts.port, timeout=120
            )
        url = f"{self.urls[n % len(self.urls)]}?n={n}&t={time.monotonic_ns()}"
        body = json.dumps({"image_url": url}).encode()
        conn.request("POST", self.parts.path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            self.failures[f"{response.status} {payload[:120]!r}"] += 1


class Profiler:
    """py-spy recording one process in raw (collapsed stack) form until stopped."""

    def __init__(self, pid: int, out: Path, native: bool = False) -> None:
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
        argv += ["--format", "raw", "--output", str(out), "--threads"]
        if native:
            argv.append("--native")
        self.out = out
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(1.0)  # attached before the step starts

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def gateway_step(
    procs: Processes,
    endpoint: str,
    image_urls: Sequence[str],
    clients: int,
    count: int,
    profile_dir: Path | None,
) -> dict[str, Any]:
    """`count` requests at `clients` keep-alive clients; CPU per request per process."""
    client = HttpClients(endpoint, image_urls)
    with ExitStack() as stack:
        if profile_dir is not None:
            for role, pid in procs.pids.items():
                out = profile_dir / f"{role.replace(' ', '-')}-c{clients}.txt"
                stack.callback(Profiler(pid, out).stop)
        load0 = os.getloadavg()[0]
        urls = _metrics_urls(procs.root, endpoint)
        before = walltime.snapshot(*urls)
        latencies, wall, cpu = _measured(procs, clients, count, client)
        after = walltime.snapshot(*urls)
    record = _record(clients, count, latencies, wall, cpu, load0)
    client_mean_ms = 1000 * sum(latencies) / len(latencies)
    record["wall"] = walltime.breakdown(before, after, client_mean_ms)
    return record | {"failures": dict(client.failures)}


def _metrics_urls(root: int, endpoint: str) -> tuple[str, str]:
    """The gateway's /metrics and the model server's Prometheus page (its REST port)."""
    gateway = urllib.parse.urlsplit(endpoint)
    rest = _stack_env(root, "DYNOSERVE_MODEL_SERVER_REST_PORT")
    server = f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics"
    return f"{gateway.scheme}://{gateway.netloc}/metrics", server


def _measured(
    procs: Processes, clients: int, count: int, one: Callable[[int], Any]
) -> tuple[list[float], float, dict[str, Any]]:
    tickets = iter(range(count))
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    latencies: list[float] = []

    def worker(index: int) -> None:
        one(-1 - index)
        ready.wait()
        go.wait()
        while True:
            with lock:
                n = next(tickets, None)
            if n is None:
                return
            started = time.perf_counter()
            one(n)
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    before = procs.snapshot()
    wall = _run(threads, go)
    return latencies, wall, per_request(before, procs.snapshot(), count)


def _record(
    clients: int,
    count: int,
    latencies: list[float],
    wall: float,
    cpu: dict[str, Any],
    load0: float,
) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": count,
        "per_s": round(count / wall, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "cpu": cpu,
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


class GrpcCallers:
    """Predict on the model server straight over gRPC, one JPEG per call (as the gateway)."""

    def __init__(self, target: str, jpeg: bytes, model: str = MODEL) -> None:
        from gateway.client import ModelServerClient, string_tensor

        self.client = ModelServerClient(target, deadline_s=120, max_attempts=1)
        self.tensor = string_tensor
        self.jpeg = jpeg
        self.model = model

    def __call__(self, n: int) -> None:
        inputs = {"images": self.tensor([self.jpeg])}
        self.client.predict(self.model, None, "serving_default", inputs)


def grpc_step(
    procs: Processes, target: str, jpeg: bytes, callers: int, count: int
) -> dict[str, Any]:
    call = GrpcCallers(target, jpeg)
    load0 = os.getloadavg()[0]
    only_server = Processes.__new__(Processes)
    only_server.pids = {"model server": procs.pids["model server"]}
    try:
        latencies, wall, cpu = _measured(only_server, callers, count, call)
    finally:
        call.client.close()
    return _record(callers, count, latencies, wall, cpu, load0)


def in_process(version: Path, image: Path, count: int) -> dict[str, Any]:
    """The signature in a process of its own: CPU ms and wall ms per call, batch 1 and 32."""
    argv = [str(VENV_PYTHON), "-m", "bench.overhead", "--in-process", str(version), str(image)]
    argv += ["--requests", str(count)]
    return _json_child(argv)


def _json_child(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, env=python_env(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"in-process measurement failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure_in_process(
    version: Path, image: bytes, count: int, sizes: Sequence[int] = (1, BATCH)
) -> dict[str, Any]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    found: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 2)}
    for size in sizes:
        value = tf.constant([image] * size)
        for _ in range(5):
            signature(images=value)
        calls = max(5, count // size)
        walls = []
        cpu0 = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            signature(images=value)
            walls.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu0
        walls.sort()
        found[f"batch{size}"] = {
            "calls": calls,
            "cpu_ms_per_image": round(1000 * cpu / (calls * size), 2),
            "p50_ms": round(1000 * walls[len(walls) // 2], 2),
            "images_per_s": round(calls * size / sum(walls), 1),
        }
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The HTTP steps against the stack, then (MobileNet only) Predict straight over gRPC."""
    tiny = args.tiny_stack
    model_dir, model = (tiny_model().parent, TINY) if tiny else (MODEL_DIR, MODEL)
    photos = write_photos(REPO_ROOT / "var" / "bench" / "photos", IMAGES)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["model"] = model
    if not tiny:
        version = ensure_model(MODEL_DIR) / "1"
        results["in_process"] = in_process(version, photos[0], args.requests)
        print(f"in-process: {results['in_process']}", flush=True)
    profile_dir = WORK / "profiles" if args.profile else None
    with ExitStack() as stack:
        nginx, image_base = start_nginx(photos[0].parent, WORK / "nginx")
        stack.callback(nginx.stop)
        dyno, base = start_stack(model_dir, WORK / "dynoserve", NO_CACHE)
        stack.callback(dyno.stop, 40)
        procs = Processes(dyno.pid)
        endpoint = f"{base}/v1/models/{model}:predict"
        urls = [f"{image_base}/{p.name}" for p in photos]
        HttpClients(endpoint, urls)(0)  # first-call costs out of the way
        results["gateway"] = []
        for clients in args.clients:
            step = gateway_step(procs, endpoint, urls, clients, args.requests, profile_dir)
            results["gateway"].append(step)
            print(f"http {clients} clients: {json.dumps(step)}", flush=True)
        if tiny:
            return results
        target = f"127.0.0.1:{_grpc_port(dyno.pid)}"
        results["grpc"] = []
        for callers in (1, BATCH):
            step = grpc_step(procs, target, photos[0].read_bytes(), callers, args.requests)
            results["grpc"].append(step)
            print(f"grpc {callers} callers: {json.dumps(step)}", flush=True)
    results["server_overhead"] = server_overhead(results)
    return results


def _grpc_port(root: int) -> str:
    """The model server's gRPC port, from the stack's environment (bench/stack.py sets it)."""
    return _stack_env(root, "DYNOSERVE_MODEL_SERVER_GRPC_PORT")


def _stack_env(root: int, name: str) -> str:
    """One variable of the stack's environment (bench/stack.py sets the ports)."""
    environ = Path(f"/proc/{root}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(name.encode() + b"="):
            return entry.split(b"=", 1)[1].decode()
    raise RuntimeError(f"the stack's environment has no {name}")


def server_overhead(results: dict[str, Any]) -> dict[str, Any]:
    """The model server's CPU and wall time per Predict over the signature in-process."""
    inproc = results["in_process"]
    out = {}
    for step in results["grpc"]:
        batch = inproc["batch1"] if step["clients"] == 1 else inproc[f"batch{BATCH}"]
        server = step["cpu"]["model server"]["cpu_ms"]
        out[f"{step['clients']} callers"] = {
            "server_cpu_ms": server,
            "in_process_cpu_ms": batch["cpu_ms_per_image"],
            "cpu_overhead_ms": round(server - batch["cpu_ms_per_image"], 2),
            "wall_overhead_ms_p50": round(step["p50_ms"] - inproc["batch1"]["p50_ms"], 2)
            if step["clients"] == 1
            else None,
        }
    return out


def tiny_model() -> Path:
    """The tests' tiny model (export.testing): its signature costs TensorFlow almost nothing,
    so what the server adds to a Predict is not lost in the noise of MobileNet's 50 ms."""
    base = REPO_ROOT / "var" / "bench-models-tiny"
    if not (base / TINY / "1" / "saved_model.pb").exists():
        code = "import sys; import export.testing as t; t.write_tiny_model(sys.argv[1], 'tiny', 1)"
        subprocess.run([str(VENV_PYTHON), "-c", code, str(base)], env=python_env(), check=True)
    return base / TINY


def tiny_jpeg(folder: Path) -> Path:
    """A 16x16 JPEG: decoding it in the graph is negligible too."""
    import io

    from PIL import Image

    path = folder / "tiny.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (220, 10, 10)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return path


def server_part(count: int, profile_dir: Path | None = None) -> dict[str, Any]:
    """The local server's own CPU and wall time per Predict (tiny model, the shipped flags:
    batching on) over the same signature called in-process, at 1 and 8 callers."""
    base, image = tiny_model(), tiny_jpeg(WORK)
    argv = [str(VENV_PYTHON), "-m", "bench.overhead", "--in-process", str(base / "1"), str(image)]
    found: dict[str, Any] = {"in_process": _json_child([*argv, "--requests", str(count), "--tiny"])}
    port = free_port()
    flags = [f"--port={port}", f"--rest_api_port={free_port()}", f"--model_name={TINY}"]
    flags += [f"--model_base_path={base}", "--enable_batching=true"]
    flags += [f"--batching_parameters_file={REPO_ROOT / 'serving' / 'batching.config'}"]
    server = ManagedProcess(
        [str(VENV_PYTHON), "-m", "serving.local", *flags],
        WORK / "tiny-server.log",
        env=python_env(),
    )
    server.start_ready(lambda: port_open(port), timeout=300)
    try:
        procs = Processes.__new__(Processes)
        procs.pids = {"model server": server.pid}
        found["grpc"] = []
        for callers in (1, 8):
            call = GrpcCallers(f"127.0.0.1:{port}", image.read_bytes(), TINY)
            load0 = os.getloadavg()[0]
            with ExitStack() as stack:
                stack.callback(call.client.close)
                if profile_dir is not None:
                    out = profile_dir / f"tiny-model-server-c{callers}.txt"
                    stack.callback(Profiler(server.pid, out).stop)
                latencies, wall, cpu = _measured(procs, callers, count, call)
            found["grpc"].append(_record(callers, count, latencies, wall, cpu, load0))
            print(f"tiny grpc {callers}: {json.dumps(found['grpc'][-1])}", flush=True)
    finally:
        server.stop()
    one = found["grpc"][0]
    inproc = found["in_process"]["batch1"]
    found["overhead_1_caller"] = {
        "cpu_ms": round(one["cpu"]["model server"]["cpu_ms"] - inproc["cpu_ms_per_image"], 2),
        "wall_ms_p50": round(one["p50_ms"] - inproc["p50_ms"], 2),
    }
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--requests", type=int, default=400, help="counted requests per step")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--profile", action="store_true", help="py-spy each process (root)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--only-server", action="store_true", help="the tiny-model part only")
    parser.add_argument(
        "--tiny-stack", action="store_true", help="HTTP steps with the tiny model (fast model)"
    )
    parser.add_argument("--skip-server", action="store_true", help="no tiny-model server part")
    parser.add_argument("--in-process", nargs=2, type=Path, metavar=("VERSION_DIR", "JPEG"))
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        version, image = args.in_process
        sizes = (1,) if args.tiny else (1, BATCH)
        print(json.dumps(measure_in_process(version, image.read_bytes(), args.requests, sizes)))
        return 0
    args.clients = [int(c) for c in args.clients.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "profiles").mkdir(exist_ok=True)
    results = {} if args.only_server else run(args)
    if not args.skip_server:
        profiles = WORK / "profiles" if args.profile else None
        results["server_part"] = server_part(max(args.requests, 1000), profiles)
        print(json.dumps(results["server_part"]["overhead_1_caller"]))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results.get("server_overhead"), indent=2))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
