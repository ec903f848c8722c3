"""Name look-ups against a real name server that never answers some names, through glibc's real
getaddrinfo, in a network namespace of their own.

`ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf, so a probe run
there resolves through tests/dnshost.py's TinyNameServer on 127.0.0.1:53 of a namespace that
has only `lo`: nothing leaves the machine, and the host's resolver is untouched. The probe
(this module's `main`, run in a subprocess inside the namespace) prints its measurements as
JSON; the tests assert on them. Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.fetch import ImageFetcher
from tests.gateway.test_resolve import policy

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD = "good.test"
TIMEOUT = "image_host_timeout"
DEAD = "dead"  # every name under this suffix goes unanswered: `x.site7.dead` ...


# --- the probe, run inside the namespace ------------------------------------------------------


def _timed(action: Callable[[], Any]) -> dict[str, Any]:
    """How long `action` took and how it ended (the error code, or "ok")."""
    start = time.monotonic()
    try:
        action()
        code = "ok"
    except GatewayError as exc:
        code = f"{exc.code}: {exc}"
    except OSError as exc:  # the lookup's own error (glibc gave up)
        code = f"{type(exc).__name__}: {exc}"
    return {"s": time.monotonic() - start, "code": code}


def _in_threads(actions: list[Callable[[], Any]]) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * len(actions)

    def run(i: int) -> None:
        results[i] = _timed(actions[i])

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    return threads, results


def _dns_threads() -> int:
    # Today's pool names its threads dns_0..dns_3; DnsResolver's are "dns <host>".
    return sum(1 for t in threading.enumerate() if t.name.startswith("dns"))


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def probe_flood(dead: int) -> dict[str, Any]:
    """A good name's fetch while `dead` fetches of unanswered names (one domain each) wait."""
    from tests.dnshost import TinyNameServer
    from tests.imagehost import image_bytes, serving_images

    server = TinyNameServer({GOOD: "127.0.0.1"}, silent=(DEAD,), bind=("127.0.0.1", 53))
    with serving_images() as images:
        port = images.server_address[1]
        images.add_bytes("/cat.png", image_bytes("PNG"))
        fetcher = ImageFetcher(policy(connect_s=1.0))
        good = f"http://{GOOD}:{port}/cat.png"
        alone = _timed(lambda: fetcher.fetch(good))
        urls = [f"http://x.site{i}.{DEAD}:{port}/cat.png" for i in range(dead)]
        threads, dead_results = _in_threads([partial(fetcher.fetch, u) for u in urls])
        _wait_for(lambda: server.names_under(DEAD) >= dead, 1.0)
        queries = server.names_under(DEAD)
        dns_threads = _dns_threads()
        loaded = _timed(lambda: fetcher.fetch(good))
        for thread in threads:
            thread.join()
        # A budget shorter than the connect timeout ends the look-up sooner.
        short = ImageFetcher(policy(connect_s=1.0, total_s=0.6))
        budget = _timed(lambda: short.fetch(f"http://x.short.{DEAD}:{port}/cat.png"))
    return {
        "alone": alone,
        "loaded": loaded,
        "dead": dead_results,
        "dead_names_asked": queries,
        "dns_threads": dns_threads,
        "budget": budget,
    }


def probe_caps() -> dict[str, Any]:
    """Thread counts under the per-domain and global caps, the unanswered-name memory, and the
    RSS a blocked look-up costs."""
    from gateway.resolve import DnsResolver
    from tests.dnshost import TinyNameServer

    server = TinyNameServer({GOOD: "127.0.0.1"}, silent=(DEAD,), bind=("127.0.0.1", 53))

    def flood(dns: DnsResolver, names: list[str]) -> dict[str, Any]:
        threads, results = _in_threads([partial(dns.resolve, n, 80, 1.0) for n in names])
        _wait_for(lambda: sum(r is not None for r in results) >= len(names) - dns.threads, 1.0)
        peak = dns.threads
        good = _timed(lambda: dns.resolve(GOOD, 80, 1.0))
        for thread in threads:
            thread.join()
        refused = [
            r for r in results if r["code"].startswith("image_host_timeout") and r["s"] < 0.5
        ]
        return {"peak": peak, "refused": len(refused), "good": good, "results": results}

    # First, while nothing else is blocked: the RSS that 256 blocked look-ups cost.
    rss_dns = DnsResolver()
    rss_before = _rss_kb()
    blocked = flood(rss_dns, [f"x.rss{i}.{DEAD}" for i in range(256)])
    rss_after = _rss_kb()  # the callers are gone; the look-ups are still blocked (~10 s)
    rss_threads = rss_dns.threads
    one_domain = flood(DnsResolver(), [f"n{i}.one.{DEAD}" for i in range(100)])
    many = flood(DnsResolver(max_threads=64), [f"x.site{i}.{DEAD}" for i in range(300)])
    memory_dns = DnsResolver()
    first = _timed(lambda: memory_dns.resolve(f"x.again.{DEAD}", 80, 1.2))
    again = _timed(lambda: memory_dns.resolve(f"x.again.{DEAD}", 80, 1.2))
    return {
        "one_domain": {k: v for k, v in one_domain.items() if k != "results"},
        "many": {k: v for k, v in many.items() if k != "results"},
        "memory": {"first": first, "again": again},
        "rss": {
            "peak": blocked["peak"],
            "still_blocked": rss_threads,
            "before_kb": rss_before,
            "after_kb": rss_after,
        },
        "names_asked": server.names_under(DEAD),
    }


def main() -> None:
    probes: dict[str, Callable[[], dict[str, Any]]] = {
        "flood": lambda: probe_flood(int(sys.argv[2])),
        "caps": probe_caps,
    }
    print(json.dumps(probes[sys.argv[1]]()), flush=True)
    os._exit(0)  # look-ups still blocked in getaddrinfo must not hold the exit


# --- the tests ----------------------------------------------------------------------------------


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); the fake-resolver tests still run"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A network namespace with only `lo` up, whose resolv.conf names 127.0.0.1."""
    reason = _why_no_netns()
    if reason:
        pytest.skip(reason)
    name = f"dynoserve-dns-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    etc = Path("/etc/netns") / name
    try:
        etc.mkdir(parents=True)
        # glibc's defaults (timeout 5 s, 2 attempts): a look-up blocks ~10 s, as on a dyno.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def run_probe(netns: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = f"from {__name__} import main; main()"
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", code, *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_dead_name_server_does_not_delay_other_hosts(netns: str) -> None:
    result = run_probe(netns, "flood", "50")
    assert result["alone"]["code"] == "ok"
    # The good host's look-up and fetch do not queue behind the 50 unanswered ones...
    assert result["loaded"]["code"] == "ok", result["loaded"]
    assert result["loaded"]["s"] < 0.5
    assert result["dead_names_asked"] >= 50  # ...which all really were waiting on the server.
    # Each unanswered look-up ends at the connect timeout (1 s), with the timeout error...
    for dead in result["dead"]:
        assert dead["code"].startswith("image_host_timeout"), dead
        assert 0.9 <= dead["s"] < 2.0
    # ...or sooner when the fetch's budget is shorter than that.
    assert result["budget"]["code"].startswith("image_host_timeout")
    assert 0.5 <= result["budget"]["s"] < 0.9
    assert result["dns_threads"] <= 50  # one per pending name, no more


def test_caps_bound_the_threads_dead_name_servers_hold(netns: str) -> None:
    result = run_probe(netns, "caps")
    one = result["one_domain"]
    assert one["peak"] <= 4  # 100 names under one dead domain hold its 4 threads
    assert one["refused"] >= 96  # the rest refused at once, not after a timeout
    many = result["many"]
    assert many["peak"] <= 64  # 300 dead domains hold the global cap, no more
    assert many["refused"] >= 300 - 64
    # One dead domain never costs a good host anything; with the global cap full, a new name
    # is refused at once rather than queued behind the dead ones.
    assert one["good"]["code"] == "ok", one["good"]
    assert many["good"]["code"].startswith("image_host_timeout"), many["good"]
    assert "already waiting" in many["good"]["code"]
    assert one["good"]["s"] < 0.5
    assert many["good"]["s"] < 0.5
    # Once a name went unanswered, asking again is refused at once, not after another timeout.
    assert result["memory"]["first"]["code"].startswith("image_host_timeout")
    assert result["memory"]["again"]["code"].startswith("image_host_timeout")
    assert "did not answer" in result["memory"]["again"]["code"]
    assert result["memory"]["again"]["s"] < 0.1


if __name__ == "__main__":
    main()
