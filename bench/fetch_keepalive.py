"""Image fetches on kept-alive connections against a new connection per fetch (the gateway's
fetcher with DYNOSERVE_FETCH_KEEPALIVE 32 and 0): wall and CPU time per fetch of a benchmark
photo (640x480 JPEG, ~145 KB) from nginx on loopback, over HTTP and HTTPS.

Rounds interleave the two settings (their order alternates) so a neighbour's load falls on
both; compare the ratios, and read the load average. CPU is the fetching thread's own
(thread_time): the address checks, connect, TLS, request, body read, watchdog. Loopback has no
distance: a real host far away adds its round trips (TCP, then TLS) to every new connection.

Run: .venv/bin/python -m bench.fetch_keepalive [--calls 200] [--rounds 5]   (JSON on stdout)
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.images import write_photos
from bench.nginx import BACKLOG, KEEPALIVE_REQUESTS, KEEPALIVE_TIMEOUT_S
from devtools import nginx
from devtools.net import free_port, port_open
from devtools.processes import REPO_ROOT
from devtools.tls import self_signed
from gateway.fetch import FetchPolicy, ImageFetcher

WORK = REPO_ROOT / "var" / "bench" / "fetch-keepalive"

_HTTP = """\
    types {{ image/jpeg jpg jpeg; }}
    sendfile on;
    keepalive_timeout {keepalive}s;
    keepalive_requests {requests};
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        root {root};
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl backlog={backlog};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}"""


def start_host(stack: ExitStack, root: Path) -> tuple[str, str, ssl.SSLContext]:
    """nginx serving `root` over HTTP and HTTPS; the two base URLs and a context trusting it."""
    WORK.mkdir(parents=True, exist_ok=True)
    cert, key, pem = self_signed(WORK, "127.0.0.1")
    port, tls_port = free_port(), free_port()
    http = _HTTP.format(
        keepalive=KEEPALIVE_TIMEOUT_S,
        requests=KEEPALIVE_REQUESTS,
        port=port,
        tls_port=tls_port,
        backlog=BACKLOG,
        cert=cert,
        key=key,
        root=root,
    )
    run = WORK / "nginx"
    proc = nginx.start(nginx.render("the keep-alive benchmark's image host", run, http), run, port)
    stack.callback(proc.stop)
    deadline = time.monotonic() + 20
    while not port_open(tls_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    trust = ssl.create_default_context(cadata=pem.decode())
    return f"http://127.0.0.1:{port}", f"https://127.0.0.1:{tls_port}", trust


def per_fetch(fetcher: ImageFetcher, url: str, calls: int) -> tuple[float, float]:
    """Wall and CPU (this thread) microseconds per fetch of `url`."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        fetcher.fetch(url)
    return (
        1e6 * (time.perf_counter() - wall) / calls,
        1e6 * (time.thread_time() - cpu) / calls,
    )


def measure(calls: int, rounds: int) -> dict[str, Any]:
    photo = write_photos(REPO_ROOT / "var" / "bench" / "photos", 1)[0]
    policy = FetchPolicy(10_000_000, 5.0, 10.0, 20.0, 3, (), allow_private=True)
    results: dict[str, Any] = {
        "photo_bytes": photo.stat().st_size,
        "calls": calls,
        "rounds": rounds,
        "load_average_before": list(os.getloadavg()),
    }
    with ExitStack() as stack:
        http_base, https_base, trust = start_host(stack, photo.parent)
        for scheme, base in (("http", http_base), ("https", https_base)):
            url = f"{base}/{photo.name}"
            fetchers = {
                "kept_alive": ImageFetcher(policy, tls=trust),
                "new_each": ImageFetcher(replace(policy, keepalive=0), tls=trust),
            }
            for fetcher in fetchers.values():
                stack.callback(fetcher.close)
                per_fetch(fetcher, url, 20)  # warm up
            results[scheme] = _rounds(fetchers, url, calls, rounds)
    results["load_average_after"] = list(os.getloadavg())
    return results


def _rounds(fetchers: dict[str, ImageFetcher], url: str, calls: int, rounds: int) -> Any:
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fetchers}
    for n in range(rounds):
        order = list(fetchers) if n % 2 == 0 else list(reversed(fetchers))
        for name in order:
            runs[name].append(per_fetch(fetchers[name], url, calls))
    on, off = runs["kept_alive"], runs["new_each"]
    return {
        "wall_us": {name: [round(w) for w, _ in values] for name, values in runs.items()},
        "cpu_us": {name: [round(c) for _, c in values] for name, values in runs.items()},
        "new_over_kept_wall": _median_ratio([w for w, _ in off], [w for w, _ in on]),
        "new_over_kept_cpu": _median_ratio([c for _, c in off], [c for _, c in on]),
        "connections": {name: f.connection_counts() for name, f in fetchers.items()},
    }


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the per-round ratios (each round's pair ran back to back)."""
    return round(statistics.median(a / b for a, b in zip(numerators, denominators, strict=True)), 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch_keepalive", description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.calls, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
