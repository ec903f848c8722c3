"""`python -m tests.scaleout.sizing`: memory of one dyno as `make run` starts it, idle and under
closed-loop load, per process role (docs/sizing.md).

RSS counts a page shared by several processes in each of them; USS (the private pages) counts
none of the shared ones. What the dyno's memory cgroup (Heroku's `memory_total`) charges lies in
between: each page once. (PSS would split shared pages among every process mapping them, on
this shared machine other engineers' processes too, so it is not used.) Both are sampled every
half second; the peaks are reported.

    python -m tests.scaleout.sizing --export-dir exports --model shapes
    python -m export.benchmodel --export-dir /tmp/bench && \
    python -m tests.scaleout.sizing --export-dir /tmp/bench --model mobilenet
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from devtools.dynostack import Dyno, run_env
from tests.support import REPO_ROOT

SAMPLE = REPO_ROOT / "docs" / "samples" / "blue-circle.jpg"


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, USS) of a process in KiB; (0, 0) once it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]}
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Rss", 0), private


class Peaks:
    """Largest RSS and USS per role, and of the whole dyno, while sampling."""

    def __init__(self, dyno: Dyno) -> None:
        self.dyno = dyno
        self.rss: dict[str, int] = defaultdict(int)
        self.uss: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        rss: dict[str, int] = defaultdict(int)
        uss: dict[str, int] = defaultdict(int)
        for pid, role in self.dyno.processes().items():
            r, p = memory_kib(pid)
            rss[role] += r
            uss[role] += p
        rss["dyno"], uss["dyno"] = sum(rss.values()), sum(uss.values())
        for role in rss:
            self.rss[role] = max(self.rss[role], rss[role])
            self.uss[role] = max(self.uss[role], uss[role])

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def __enter__(self) -> Peaks:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def table(self) -> dict[str, str]:
        return {
            role: f"RSS {self.rss[role] / 1024:.0f} USS {self.uss[role] / 1024:.0f} MiB"
            for role in sorted(self.rss)
        }


def load(port: int, model: str, clients: int, seconds: float) -> dict[str, int]:
    """`clients` threads predicting for `seconds`; answers counted by status."""
    body = json.dumps({"image_b64": base64.b64encode(SAMPLE.read_bytes()).decode()}).encode()
    counts: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                headers = {"Content-Type": "application/json"}
                conn.request("POST", f"/v1/models/{model}:predict", body, headers)
                status = str(conn.getresponse().status)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
            finally:
                conn.close()
            with lock:
                counts[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", type=Path, default=REPO_ROOT / "exports")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dynoserve-sizing-") as tmp:
        work = Path(tmp)
        env = run_env(work, {"DYNOSERVE_EXPORT_DIR": str(args.export_dir.resolve())})
        dyno = Dyno(env, name="web.1", work=work).start()
        try:
            dyno.wait_ready(timeout=180)
            time.sleep(5)  # settle after warmup
            with Peaks(dyno) as idle:
                time.sleep(5)
            print("idle:", json.dumps(idle.table(), indent=1))
            with Peaks(dyno) as busy:
                answers = load(dyno.port, args.model, args.clients, args.seconds)
            print(f"{args.clients} clients, {args.seconds:.0f} s: {answers}")
            print("under load:", json.dumps(busy.table(), indent=1))
        finally:
            dyno.stop()


if __name__ == "__main__":
    main()
