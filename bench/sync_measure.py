"""Measures sync for the closing note: boot sync time for two benchmark-sized models, and the CPU
an idle watch loop burns. Run: `.venv/bin/python -m bench.sync_measure [--idle-seconds 60]`.

The models are stand-ins: random bytes laid out like the benchmark model's SavedModel (14 MB,
mostly one variables shard), published for real to a moto S3 server on loopback; sync runs in
the gateway virtualenv as on the dyno.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from devtools.fakeserver import FakeRestStatusServer
from devtools.net import free_port, port_open
from devtools.processes import GATEWAY_PYTHON, VENV_PYTHON, ManagedProcess, python_env, wait_for
from devtools.s3 import s3_client
from modelrepo.syncstatus import read_status
from sync.publish import Publisher, PublishRequest
from sync.settings import Settings

MODEL_BYTES = 14 * 1024 * 1024


def stand_in(root: Path, model: str) -> Path:
    folder = root / model / "1"
    (folder / "variables").mkdir(parents=True)
    (folder / "assets.extra").mkdir()
    (folder / "saved_model.pb").write_bytes(os.urandom(600_000))
    (folder / "variables" / "variables.index").write_bytes(os.urandom(20_000))
    data = MODEL_BYTES - 620_000 - 70_000
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(data))
    (folder / "assets.extra" / "tf_serving_warmup_requests").write_bytes(os.urandom(70_000))
    return folder


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boot_once(env: dict[str, str]) -> tuple[float, float, float]:
    """Wall time of `python -m sync --once`, its sync pass alone, and the process's CPU time."""
    cpu_before = _children_cpu()
    started = time.monotonic()
    argv = [str(GATEWAY_PYTHON), "-m", "sync", "--once"]
    subprocess.run(argv, env=python_env(env), check=True, capture_output=True)
    wall = time.monotonic() - started
    status = read_status(Path(env["DYNOSERVE_SYNC_STATUS_FILE"]))
    assert status is not None, "sync --once wrote no status file"
    return wall, status.last_pass_seconds, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(idle_seconds: float, intervals: list[float]) -> None:
    work = Path(tempfile.mkdtemp(prefix="sync-measure-"))
    port = free_port()
    argv = [str(VENV_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with ManagedProcess(argv, work / "moto.log") as moto, FakeRestStatusServer() as server:
        moto.wait_ready(lambda: port_open(port))
        bucket = f"measure-{uuid.uuid4().hex[:8]}"
        s3_client(f"http://127.0.0.1:{port}").create_bucket(Bucket=bucket)
        env = {
            "BUCKETEER_BUCKET_NAME": bucket,
            "BUCKETEER_AWS_ACCESS_KEY_ID": "x",
            "BUCKETEER_AWS_SECRET_ACCESS_KEY": "x",
            "DYNOSERVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "DYNOSERVE_MODEL_SERVER_REST_URL": server.url,
        }
        settings = Settings.from_env(env)
        assert settings.s3 is not None
        for model in ("bench_a", "bench_b"):
            folder = stand_in(work / "exports", model)
            Publisher(settings.s3).publish(PublishRequest(model, 1, folder))
        runs = []
        for attempt in range(3):
            base = work / f"models-{attempt}"
            run_env = {**env, "DYNOSERVE_MODEL_BASE_PATH": str(base),
                       "DYNOSERVE_SYNC_STATUS_FILE": str(base / "sync-status.json")}  # fmt: skip
            runs.append(boot_once(run_env))
        warm = boot_once(run_env)  # local copy present: nothing to fetch
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"boot sync, 2 models x {MODEL_BYTES / 2**20:.0f} MiB from moto on loopback:")
        print(f"  cold: wall {[f'{r[0]:.2f}' for r in runs]} s (process start to exit), "
              f"sync pass {[f'{r[1]:.2f}' for r in runs]} s, "
              f"CPU {[f'{r[2]:.2f}' for r in runs]} s; "
              f"median wall {statistics.median(r[0] for r in runs):.2f} s")  # fmt: skip
        print(f"  warm (local copy up to date): wall {warm[0]:.2f} s, pass {warm[1]:.3f} s, "
              f"CPU {warm[2]:.2f} s")  # fmt: skip
        server.serve_config(run_env)
        for interval in intervals:
            idle_cpu(run_env, interval, idle_seconds, work)


def idle_cpu(env: dict[str, str], interval: float, seconds: float, work: Path) -> None:
    watch_env = {**env, "DYNOSERVE_SYNC_INTERVAL": str(interval)}
    argv = [str(GATEWAY_PYTHON), "-m", "sync"]
    log = work / f"watch-{interval}.log"
    with ManagedProcess(argv, log, env=python_env(watch_env)) as proc:
        assert proc.proc is not None
        wait_for(lambda: "watching" in proc.log(), timeout=60, what="boot pass")
        before = cpu_seconds(proc.proc.pid)
        time.sleep(seconds)  # the measurement window itself, not a readiness wait
        used = cpu_seconds(proc.proc.pid) - before
        rss = int(Path(f"/proc/{proc.proc.pid}/statm").read_text().split()[1]) * 4096
    passes = seconds / interval
    print(f"idle watch, interval {interval:g} s: {used:.2f} CPU s in {seconds:g} s "
          f"= {100 * used / seconds:.2f}% of one core, {1000 * used / passes:.1f} ms per pass, "
          f"RSS {rss / 2**20:.0f} MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--intervals", default="30,5")
    args = parser.parse_args()
    measure(args.idle_seconds, [float(i) for i in args.intervals.split(",")])


if __name__ == "__main__":
    main()
