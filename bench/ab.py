"""Two checkouts of Dynoserve measured side by side, in turns: what a change saves in CPU per
request, on a machine whose load moves. Both run at once (`make run`'s stack, or the local
model server alone); rounds alternate between them, so a change in the machine's load falls on
both alike, and each figure is the median over rounds.

  stack   HTTP requests (unique image URLs from nginx, keep-alive clients) to each stack
          serving the tiny model: CPU ms per request of each one's gateway and model server
  server  gRPC Predict (one 16x16 JPEG) to each one's local server with the tiny model and
          the shipped batching file: the server's CPU ms per Predict

Each checkout needs .venv, .venv-gateway and gateway/_proto (symlinks will do). Run:
  .venv/bin/python -m bench.ab server|stack BEFORE_DIR AFTER_DIR [--rounds 8] [--requests 200]
      [--clients 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.images import write_photos
from bench.nginx import start_nginx
from bench.overhead import (
    NO_CACHE,
    TINY,
    WORK,
    GrpcCallers,
    HttpClients,
    Processes,
    _measured,
    tiny_jpeg,
    tiny_model,
)
from bench.stack import start_stack
from devtools.net import free_port, port_open
from devtools.processes import REPO_ROOT, ManagedProcess, python_env

Step = Callable[[], dict[str, float]]


def checkout_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = python_env(extra)
    env["PYTHONPATH"] = str(root)
    return env


def start_server(root: Path, log: Path) -> tuple[ManagedProcess, int]:
    """`root`'s local server with the tiny model and `root`'s own batching file."""
    port = free_port()
    argv = [str(root / ".venv" / "bin" / "python"), "-m", "serving.local", f"--port={port}"]
    argv += [f"--rest_api_port={free_port()}", f"--model_name={TINY}", "--enable_batching=true"]
    argv += [f"--model_base_path={tiny_model()}"]
    argv += [f"--batching_parameters_file={root / 'serving' / 'batching.config'}"]
    server = ManagedProcess(argv, log, env=checkout_env(root), cwd=root)
    server.start_ready(lambda: port_open(port), timeout=300)
    return server, port


def server_steps(roots: Sequence[Path], stack: ExitStack, args: argparse.Namespace) -> list[Step]:
    image = tiny_jpeg(WORK).read_bytes()
    steps = []
    for n, root in enumerate(roots):
        server, port = start_server(root, WORK / f"ab-server-{n}.log")
        stack.callback(server.stop)
        procs = Processes.__new__(Processes)
        procs.pids = {"model server": server.pid}
        call = GrpcCallers(f"127.0.0.1:{port}", image, TINY)
        stack.callback(call.client.close)
        steps.append(_step(procs, args.callers, args.requests, call))
    return steps


def stack_steps(roots: Sequence[Path], stack: ExitStack, args: argparse.Namespace) -> list[Step]:
    photos = write_photos(REPO_ROOT / "var" / "bench" / "photos", 8)
    nginx, image_base = start_nginx(photos[0].parent, WORK / "ab-nginx")
    stack.callback(nginx.stop)
    urls = [f"{image_base}/{p.name}" for p in photos]
    steps = []
    for n, root in enumerate(roots):
        # `root`'s stack as the bench starts it, serving the tiny model, the cache off.
        dyno, base = start_stack(tiny_model().parent, WORK / f"ab-stack-{n}", NO_CACHE, root)
        stack.callback(dyno.stop, 40)
        client = HttpClients(f"{base}/v1/models/{TINY}:predict", urls)
        steps.append(_step(Processes(dyno.pid), args.clients, args.requests, client))
    return steps


def _step(procs: Processes, clients: int, count: int, call: Callable[[int], Any]) -> Step:
    def step() -> dict[str, float]:
        latencies, wall, cpu = _measured(procs, clients, count, call)
        found = {f"{role} cpu_ms": cpu[role]["cpu_ms"] for role in cpu}
        found["per_s"] = count / wall
        found["p50_ms"] = 1000 * sorted(latencies)[len(latencies) // 2]
        return found

    return step


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("mode", choices=("server", "stack"))
    parser.add_argument("roots", nargs=2, type=Path, help="BEFORE_DIR AFTER_DIR")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per checkout per round")
    parser.add_argument("--clients", type=int, default=32, help="stack mode")
    parser.add_argument("--callers", type=int, default=1, help="server mode")
    parser.add_argument("--results", type=Path)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    rounds: list[list[dict[str, float]]] = [[], []]
    loads = []
    with ExitStack() as stack:
        build = server_steps if args.mode == "server" else stack_steps
        steps = build([r.resolve() for r in args.roots], stack, args)
        for step in steps:
            step()  # warm-up, not counted
        for n in range(args.rounds):
            loads.append(round(os.getloadavg()[0], 2))
            order = (0, 1) if n % 2 == 0 else (1, 0)
            for which in order:
                rounds[which].append(steps[which]())
    summary = {
        "mode": args.mode,
        "clients" if args.mode == "stack" else "callers": (
            args.clients if args.mode == "stack" else args.callers
        ),
        "load_average": loads,
        **{name: _medians(r) for name, r in zip(("before", "after"), rounds, strict=True)},
    }
    print(json.dumps(summary, indent=2))
    if args.results:
        args.results.write_text(json.dumps(summary | {"rounds": rounds}, indent=2) + "\n")
    return 0


def _medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}


if __name__ == "__main__":
    sys.exit(main())
