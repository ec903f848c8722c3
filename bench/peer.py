"""`python -m bench.peer`: Dynoserve next to a popular Python serving framework, in one run.

Dynoserve as `make run` runs it (bench/stack.py) and BentoML (bench/peer_service.py: TensorFlow
in-process, adaptive batching, one worker, 2 TensorFlow threads) serve the same benchmark model
and answer the same body, {"image_url": ...} for one of the same 8 photo-like JPEGs served by
nginx on loopback. Both run side by side; the steps alternate between them: at each client
count of each round one system goes first, the other first at the next (so a change in the
shared machine's load falls on both alike). The 1-client rounds run first, before any load
(BentoML's dispatcher makes a lone request wait about as long as requests waited in its recent
batches), then the other counts, then 1 client once more: what a lone client gets after load.
Every step is the same keep-alive closed loop (bench/loadclient.py's KeepAliveLoad, clients
spread over the photos, each with its own client address). The model in-process (bench.limit)
is measured before the servers start and after they stop. BentoML lives in its own virtualenv,
var/peer-venv (requirements/peer.txt, the same tensorflow-cpu pin as requirements/model.txt),
made on first use; it is never in the image.

  python -m bench.peer [--seconds 10] [--clients 1,32,100] [--rounds 2]
Results: bench/results/peer.json and a Markdown table on stdout. Loopback only; everything it
starts is stopped; about 6 minutes with the defaults (plus the first install).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench import procstat, steps
from bench.__main__ import machine, measure_limit
from bench.images import write_photos
from bench.loadclient import KeepAliveLoad, client_address, run_for
from bench.nginx import start_nginx
from bench.peer_report import SYSTEMS, render_table, step_line, summarize
from bench.serving_bench import ensure_model
from bench.stack import MODEL, ROLES, start_stack, wait_idle
from devtools.dynostack import descendants, kill
from devtools.load import url_body
from devtools.net import free_port, http_json, http_ok
from devtools.processes import REPO_ROOT, ManagedProcess, python_env

RESULTS = REPO_ROOT / "bench" / "results" / "peer.json"
WORK = REPO_ROOT / "var" / "bench" / "peer"
MODEL_DIR = REPO_ROOT / "var" / "bench-models"
PEER_VENV = REPO_ROOT / "var" / "peer-venv"
PEER_REQUIREMENTS = REPO_ROOT / "requirements" / "peer.txt"
PEER_SERVICE = "bench.peer_service:PeerService"
PEER_PATH = "/classify"
CLIENTS = (1, 32, 100)
IMAGES = 8
PEER_ROLES = (("bentoml", "peer"), ("_bentoml_impl", "peer"))
WARM_CLIENTS = 32
STEP_TIMEOUT_S = 60.0  # per request; a step's end waits for answers at most this + 5 s


@dataclass(frozen=True)
class PeerSettings:
    """The peer's batching and threads (bench/peer_service.py says why these values)."""

    max_batch_size: int = 8
    max_latency_ms: int = 10_000
    tf_threads: int = 2

    def env(self, version: Path) -> dict[str, str]:
        return {
            "PEER_MODEL_DIR": str(version),
            "PEER_MAX_BATCH_SIZE": str(self.max_batch_size),
            "PEER_MAX_LATENCY_MS": str(self.max_latency_ms),
            "PEER_TF_THREADS": str(self.tf_threads),
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per step")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="steps per system and client count")
    parser.add_argument("--limit-seconds", type=float, default=5.0, help="per limit measurement")
    parser.add_argument("--max-batch-size", type=int, default=PeerSettings.max_batch_size)
    parser.add_argument("--max-latency-ms", type=int, default=PeerSettings.max_latency_ms)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients takes comma-separated counts, not {args.clients!r}")
    if not args.clients or min(args.clients) < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("client counts, --rounds and --seconds must be positive")
    if args.max_batch_size < 2:
        parser.error("BentoML's max_batch_size must be at least 2")
    args.peer = PeerSettings(args.max_batch_size, args.max_latency_ms)
    return args


class Step(NamedTuple):
    """One step of the run: `phase` is "lone" (1 client, before any load), "load" (more
    clients) or "after" (1 client again after the load steps: BentoML's dispatcher keeps
    waiting as long as it learned requests waited under load, see bench/peer_service.py)."""

    phase: str
    round: int
    clients: int
    system: str


def schedule(clients: Sequence[int], rounds: int) -> list[Step]:
    """The steps in run order: the 1-client rounds, then the rounds of the other counts, then
    1 client once more per system. Each count's two steps run back to back, the system that
    goes first alternating from one count to the next and from round to round."""
    lone, loads = [c for c in clients if c == 1], [c for c in clients if c > 1]
    order = _alternating("lone", lone, rounds) + _alternating("load", loads, rounds)
    if lone and loads:
        order += [Step("after", 0, 1, system) for system in SYSTEMS]
    return order


def _alternating(phase: str, counts: Sequence[int], rounds: int) -> list[Step]:
    order = []
    for round_ in range(rounds):
        for index, count in enumerate(counts):
            pair = SYSTEMS if (round_ + index) % 2 == 0 else SYSTEMS[::-1]
            order += [Step(phase, round_, count, system) for system in pair]
    return order


def requirements_digest(path: Path = PEER_REQUIREMENTS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_peer_venv(venv: Path = PEER_VENV, requirements: Path = PEER_REQUIREMENTS) -> Path:
    """var/peer-venv with requirements/peer.txt installed (pip, once per version of the file);
    its `bentoml` command."""
    stamp = venv / ".stamp"
    digest = requirements_digest(requirements)
    if not (stamp.exists() and stamp.read_text().strip() == digest):
        print(f"installing {requirements.name} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", "pip==26.3"], check=True)
        subprocess.run([*pip, "install", "--quiet", "-r", str(requirements)], check=True)
        subprocess.run([*pip, "check"], check=True)
        stamp.write_text(digest + "\n")
    return venv / "bin" / "bentoml"


def peer_env(version: Path, work: Path, settings: PeerSettings) -> dict[str, str]:
    """The peer's environment: its settings, BentoML's home in `work`, no usage reports."""
    env = python_env(settings.env(version))
    env.pop("PYTHONPATH", None)  # the service imports nothing of the project
    env["BENTOML_HOME"] = str(work / "bentoml-home")
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env["DO_NOT_TRACK"] = "1"
    return env


def start_peer(
    bentoml: Path, version: Path, work: Path, settings: PeerSettings
) -> tuple[ManagedProcess, str]:
    """`bentoml serve` on 127.0.0.1, ready (/readyz: the worker has loaded the model)."""
    port = free_port()
    argv = [str(bentoml), "serve", PEER_SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--working-dir", str(REPO_ROOT)]
    proc = ManagedProcess(argv, work / "peer.log", env=peer_env(version, work, settings))
    base = f"http://127.0.0.1:{port}"
    proc.start()
    try:
        proc.wait_ready(lambda: http_ok(f"{base}/readyz"), timeout=300)
    except BaseException:
        stop_tree(proc)
        raise
    return proc, base


def stop_tree(proc: ManagedProcess, timeout: float = 30.0) -> None:
    """SIGTERM to BentoML's supervisor (it stops its worker), then SIGKILL to whatever of its
    process tree is left."""
    if proc.proc is None:
        return
    tree = descendants(proc.pid)
    proc.stop(timeout)
    for pid in tree:
        kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class System:
    """One system under test: where to post, and how to wait until it holds no request."""

    name: str
    endpoint: str
    settle: Callable[[], float]


def keep_alive_load(endpoint: str, image_urls: Sequence[str], clients: int) -> KeepAliveLoad:
    """`clients` keep-alive clients spread over the photos (client i posts photo i mod n), each
    with its own client address."""
    bodies = [url_body(url) for url in image_urls]
    addresses = [client_address(i) for i in range(clients)]
    return KeepAliveLoad.posting(endpoint, bodies, clients, addresses, timeout_s=STEP_TIMEOUT_S)


def run_load(load: KeepAliveLoad, seconds: float) -> dict[str, Any]:
    """run_for, and a warning in the record when clients still waited at the step's end."""
    record = run_for(load, seconds)
    if not load.ended:
        record["warning"] = "clients still waiting at the step's end were not counted"
    return record


def run_step(
    system: System,
    image_urls: Sequence[str],
    clients: int,
    seconds: float,
    roles: procstat.Roles,
) -> dict[str, Any]:
    """One closed-loop step against `system` while every process's CPU is counted."""
    waited = system.settle()
    load0 = os.getloadavg()[0]
    runner = steps.RunnerCpu()
    sampler = procstat.Sampler(roles).start()
    record = run_load(keep_alive_load(system.endpoint, image_urls, clients), seconds)
    usage = sampler.stop()
    busy = runner.finish(usage)
    warnings = [w for w in (record.pop("warning", None), busy.pop("warning", None)) if w]
    own = system_cpu_s(usage.cpu_s, system.name)
    return {
        "system": system.name,
        "clients": clients,
        **record,
        "cpu_ms_per_request": round(1000 * own / record["requests"], 1)
        if record["requests"]
        else None,
        "cpu_s": {role: round(s, 2) for role, s in sorted(usage.cpu_s.items())},
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "idle_wait_s": waited,
        **busy,
        **({"warning": "; ".join(warnings)} if warnings else {}),
    }


def system_cpu_s(cpu_s: dict[str, float], system: str) -> float:
    """CPU seconds of `system`'s own processes (the image host and the runner not counted)."""
    if system == "peer":
        return cpu_s.get("peer", 0.0)
    dyno_roles = {role for _, role in ROLES} | {"dynoserve"}
    return sum(s for role, s in cpu_s.items() if role in dyno_roles)


def warm_up(system: System, image_urls: Sequence[str], clients: int, seconds: float) -> None:
    """First-call costs out of the steps, not recorded: at 1 client the first runs and
    BentoML's dispatcher training (before the lone-client steps, which load would spoil);
    at WARM_CLIENTS the first batches of each size (before the load steps)."""
    run_load(keep_alive_load(system.endpoint, image_urls, clients), seconds)


def same_answer(dyno: System, peer: System, image_url: str) -> dict[str, Any]:
    """Both systems' top classes and scores for one photo: the same model ranks alike."""
    ours, theirs = (answer(s.endpoint, image_url) for s in (dyno, peer))
    dyno_top = [[p["label"], p["score"]] for p in ours["predictions"]]
    peer_top = [list(pair) for pair in zip(theirs[0]["classes"], theirs[0]["scores"], strict=True)]
    same = [label for label, _ in dyno_top] == [label for label, _ in peer_top]
    return {"dynoserve": dyno_top, "peer": peer_top, "same_classes": same}


def answer(endpoint: str, image_url: str) -> Any:
    status, _, body = http_json(endpoint, {"image_url": image_url})
    if status != 200:
        raise RuntimeError(f"{endpoint} answered {status}: {json.dumps(body)[:300]}")
    return body


def limit_once(version: Path, photo: Path, seconds: float, when: str) -> dict[str, Any]:
    found = measure_limit(version, photo, seconds)
    print(f"limit ({when}): {json.dumps(found)}", flush=True)
    return {"when": when, "load_average": round(os.getloadavg()[0], 2), **found}


def measure(args: argparse.Namespace, work: Path, bentoml: Path) -> dict[str, Any]:
    version = ensure_model(MODEL_DIR) / "1"
    photos = write_photos(REPO_ROOT / "var" / "bench" / "photos", IMAGES)
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "seconds": args.seconds,
            "clients": args.clients,
            "rounds": args.rounds,
            "images": len(photos),
            "peer": vars(args.peer),
        },
        "peer_version": peer_version(bentoml),
        "limit": [limit_once(version, photos[0], args.limit_seconds, "before")],
        "steps": [],
    }
    with ExitStack() as stack:
        nginx, image_base = start_nginx(photos[0].parent, work / "nginx")
        stack.callback(nginx.stop)
        dyno, base = start_stack(MODEL_DIR, work / "dynoserve")
        stack.callback(dyno.stop, 40)
        peer, peer_base = start_peer(bentoml, version, work, args.peer)
        stack.callback(stop_tree, peer)
        image_urls = [f"{image_base}/{p.name}" for p in photos]
        systems = {
            "dynoserve": System(
                "dynoserve", f"{base}/v1/models/{MODEL}:predict", lambda: wait_idle(base)
            ),
            "peer": System("peer", f"{peer_base}{PEER_PATH}", lambda: 0.0),
        }
        roots = {dyno.pid: "dynoserve", peer.pid: "peer", nginx.pid: "nginx"}
        roles = procstat.roles_under(roots, [*PEER_ROLES, *ROLES])
        results["answers"] = same_answer(systems["dynoserve"], systems["peer"], image_urls[0])
        warmed: set[int] = set()
        for planned in schedule(args.clients, args.rounds):
            for count in [1, WARM_CLIENTS] if planned.phase == "load" else [1]:
                if count not in warmed:
                    for system in systems.values():
                        warm_up(system, image_urls, count, 2.0 if count == 1 else 5.0)
                    warmed.add(count)
            step = run_step(
                systems[planned.system], image_urls, planned.clients, args.seconds, roles
            )
            results["steps"].append({"phase": planned.phase, "round": planned.round + 1, **step})
            print(step_line(results["steps"][-1]), flush=True)
    results["limit"].append(limit_once(version, photos[0], args.limit_seconds, "after"))
    results["summary"] = summarize(results["steps"], args.clients)
    return results


def peer_version(bentoml: Path) -> str:
    python = bentoml.parent / "python"
    code = "import importlib.metadata as m; print(m.version('bentoml'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bentoml = ensure_peer_venv()
    work = WORK / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    work.mkdir(parents=True)
    print(f"logs in {work}", flush=True)
    started = time.monotonic()
    results = measure(args, work, bentoml)
    results["seconds"] = round(time.monotonic() - started, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(render_table(results))
    print(f"wrote {args.results} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
