"""py-spy's collapsed stacks (`--format raw`) summed by stage of a request, per process.

A sample belongs to the first stage (in the order below) whose marker appears anywhere in its
stack, so a fetch inside the predictor counts as the fetch, not the predictor. py-spy samples
threads that are running or waiting for a CPU, not those blocked (GIL, locks, sockets): a
stage's share of the samples is its share of the process's busy time.

Run: .venv/bin/python -m bench.profiles var/bench/overhead/profiles/gateway-c32.txt [--requests N]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# (marker in a frame, stage), most specific first.
GATEWAY_STAGES = (
    ("gateway/fetch.py", "fetch (http.client to the image host)"),
    ("gateway/resolve.py", "fetch (DNS and address checks)"),
    ("gateway/netguard.py", "fetch (DNS and address checks)"),
    ("gateway/images.py", "image check (Pillow)"),
    ("answercache", "answer cache (SHA-256)"),
    ("string_tensor", "protobuf: input tensor"),
    ("signatures.py", "protobuf: input tensor"),
    ("grpc/", "gRPC client (Predict, metadata)"),
    ("client.py", "gRPC client (Predict, metadata)"),
    ("gateway/topk.py", "ranking"),
    ("gateway/admission.py", "admission"),
    ("gateway/membudget.py", "memory budget"),
    ("prometheus_client", "metrics"),
    ("logging/", "access log"),
    ("gateway/logs.py", "access log"),
    ("json", "JSON (parse body, render answer)"),
    ("gateway/bodies.py", "JSON (parse body, render answer)"),
    ("flask/", "Flask and werkzeug (routing, request, response)"),
    ("werkzeug/", "Flask and werkzeug (routing, request, response)"),
    ("waitress/", "waitress (HTTP parse, write, event loop)"),
    ("threading.py", "threads (pools, timers)"),
)
SERVER_STAGES = (
    ("serving/local/servable.py", "TensorFlow (the signature call)"),
    ("tensorflow/", "TensorFlow (the signature call)"),
    ("serving/local/batching.py", "batching hand-off"),
    ("serving/local/tensors.py", "tensors (proto <-> numpy)"),
    ("serving/local/predict.py", "Predict checks and response"),
    ("prometheus_client", "metrics"),
    ("serving/local/dataplane.py", "data plane"),
    ("serving/local/manager.py", "manager (version lookup)"),
    ("grpc/", "gRPC server (Python part)"),
    ("threading.py", "threads (pools, waits)"),
)


def read(path: Path) -> Counter[str]:
    """Samples per stack (the thread's name dropped)."""
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";", 1)
        stacks[frames[-1] if stack.startswith("thread") else stack] += int(count)
    return stacks


def by_stage(stacks: Counter[str], stages: Sequence[tuple[str, str]]) -> Counter[str]:
    found: Counter[str] = Counter()
    for stack, count in stacks.items():
        stage = next((name for marker, name in stages if marker in stack), "other")
        found[stage] += count
    return found


def summary(path: Path, rate: int, requests: int | None) -> list[tuple[str, int, float, float]]:
    """(stage, samples, share, ms per request) rows, the largest first."""
    stages = SERVER_STAGES if "model-server" in path.name else GATEWAY_STAGES
    counts = by_stage(read(path), stages)
    total = sum(counts.values()) or 1
    per = 1000 / rate / requests if requests else 0.0
    return [(s, n, n / total, n * per) for s, n in counts.most_common()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--rate", type=int, default=500, help="py-spy's samples per second")
    parser.add_argument("--requests", type=int, help="requests during the profile")
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(f"\n{path.name}")
        for stage, samples, share, ms in summary(path, args.rate, args.requests):
            per = f"{ms:7.2f} ms/request" if args.requests else ""
            print(f"  {stage:50s} {samples:6d} {100 * share:5.1f}%  {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
