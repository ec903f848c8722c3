"""DnsResolver's caps, sharing and memory, with a fake getaddrinfo whose dead names block until
the test releases them. The same behaviour against a real name server and glibc's real
getaddrinfo is in test_resolve_netns.py (root only); these run everywhere."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.errors import GatewayError, ImageHostError
from gateway.fetch import FetchPolicy, ImageFetcher
from gateway.resolve import DnsResolver, domain_of
from tests.imagehost import ImageServer, image_bytes

GOOD = "good.test"


class FakeSlowLookup:
    """Stands in for getaddrinfo: names in `answers` resolve at once; names ending in `.dead`
    block (a name server that never answers) until `release` is set, then fail as glibc does
    or, if `late` holds them, answer late."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.late: dict[str, list[str]] = {}
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.calls[host] += 1
        if host.endswith(".dead"):
            self.release.wait(30)
            if host in self.late:
                return self.late[host]
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if host in self.answers:
            return self.answers[host]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
def lookup() -> Iterator[FakeSlowLookup]:
    fake = FakeSlowLookup({GOOD: ["127.0.0.1"]})
    yield fake
    fake.release.set()  # let every blocked look-up thread end


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll until `predicate` holds or `timeout_s` passes; whether it held."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(0.005)
    return True


def in_threads(action: Callable[[str], Any], names: list[str]) -> list[threading.Thread]:
    threads = [threading.Thread(target=action, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    return threads


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.monotonic()
    try:
        outcome = action()
    except (GatewayError, OSError) as exc:
        outcome = exc
    return time.monotonic() - start, outcome


def policy(connect_s: float = 0.5, total_s: float = 4.0) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=1_000_000,
        connect_timeout_s=connect_s,
        read_timeout_s=2.0,
        total_timeout_s=total_s,
        max_redirects=0,
        allow_hosts=(),
        allow_private=True,
    )


def test_dead_name_servers_do_not_delay_another_hosts_fetch(
    lookup: FakeSlowLookup, image_server: ImageServer
) -> None:
    image_server.add_bytes("/resolve-cat.png", image_bytes("PNG"))
    port = image_server.server_address[1]
    fetcher = ImageFetcher(policy(connect_s=2.0), lookup)
    errors: list[ImageHostError] = []

    def fetch_dead(url: str) -> None:
        try:
            fetcher.fetch(url)
        except ImageHostError as exc:
            errors.append(exc)

    threads = in_threads(fetch_dead, [f"http://x.site{i}.dead:{port}/" for i in range(50)])
    wait_until(lambda: lookup.total_calls >= 50, timeout_s=1.0)  # a 4-thread pool stops at 4
    elapsed, fetched = timed(lambda: fetcher.fetch(f"http://{GOOD}:{port}/resolve-cat.png"))
    assert not isinstance(fetched, GatewayError), fetched
    assert elapsed < 0.5
    assert lookup.total_calls == 51  # every dead name really was being looked up meanwhile
    for thread in threads:
        thread.join()
    assert len(errors) == 50
    assert {e.code for e in errors} == {"image_host_timeout"}


@pytest.mark.parametrize(("connect_s", "total_s", "expected_s"), [(0.3, 4.0, 0.3), (2.0, 0.3, 0.3)])
def test_a_lookup_ends_at_the_connect_timeout_or_the_fetch_budget(
    lookup: FakeSlowLookup, connect_s: float, total_s: float, expected_s: float
) -> None:
    fetcher = ImageFetcher(policy(connect_s, total_s), lookup)
    elapsed, error = timed(lambda: fetcher.fetch("http://x.never.dead/cat.png"))
    assert isinstance(error, ImageHostError)
    assert error.code == "image_host_timeout"
    assert "resolving image host 'x.never.dead' timed out" in str(error)
    assert expected_s - 0.05 <= elapsed < expected_s + 0.5


def test_concurrent_lookups_of_one_name_share_one_call(lookup: FakeSlowLookup) -> None:
    dns = DnsResolver(lookup)
    lookup.late["slow.dead"] = ["93.184.216.34"]
    answers: list[list[str]] = []
    threads = in_threads(lambda n: answers.append(dns.resolve(n, 80, 5.0)), ["slow.dead"] * 10)
    assert wait_until(lambda: lookup.total_calls == 1)
    lookup.release.set()
    for thread in threads:
        thread.join()
    assert answers == [["93.184.216.34"]] * 10
    assert lookup.calls["slow.dead"] == 1
    assert dns.threads == 0


def test_one_domain_holds_at_most_per_domain_threads(lookup: FakeSlowLookup) -> None:
    dns = DnsResolver(lookup, per_domain=4)
    outcomes: list[tuple[float, Any]] = []
    names = [f"random{i}.evil.dead" for i in range(20)]
    threads = in_threads(lambda n: outcomes.append(timed(lambda: dns.resolve(n, 80, 2.0))), names)
    assert wait_until(lambda: len(outcomes) == 16)  # 16 refused at once
    assert dns.threads == 4
    assert lookup.total_calls == 4
    refused = [error for elapsed, error in outcomes if elapsed < 0.5]
    assert len(refused) == 16
    assert all(e.code == "image_host_timeout" and "'evil.dead'" in str(e) for e in refused)
    assert dns.resolve(GOOD, 80, 1.0) == ["127.0.0.1"]  # another domain is not held up
    lookup.release.set()
    for thread in threads:
        thread.join()
    assert wait_until(lambda: dns.threads == 0)


def test_all_lookups_hold_at_most_max_threads(lookup: FakeSlowLookup) -> None:
    dns = DnsResolver(lookup, max_threads=8)
    outcomes: list[tuple[float, Any]] = []
    names = [f"x.site{i}.dead" for i in range(30)]
    threads = in_threads(lambda n: outcomes.append(timed(lambda: dns.resolve(n, 80, 2.0))), names)
    assert wait_until(lambda: len(outcomes) == 22)
    assert dns.threads == 8
    assert lookup.total_calls == 8
    # Full: a new name is refused at once (not queued behind the dead ones).
    elapsed, error = timed(lambda: dns.resolve(GOOD, 80, 2.0))
    assert isinstance(error, ImageHostError)
    assert error.code == "image_host_timeout"
    assert "already waiting" in str(error)
    assert elapsed < 0.5
    lookup.release.set()
    for thread in threads:
        thread.join()
    assert wait_until(lambda: dns.threads == 0)
    assert dns.resolve(GOOD, 80, 1.0) == ["127.0.0.1"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unanswered_name_is_refused_at_once_for_a_while(lookup: FakeSlowLookup) -> None:
    clock = FakeClock()
    # unanswered_after_s=0: any whole timeout counts (the 1 s default has its own test).
    dns = DnsResolver(lookup, unanswered_memory_s=5.0, unanswered_after_s=0.0, clock=clock)
    elapsed, error = timed(lambda: dns.resolve("x.gone.dead", 80, 0.2))
    assert isinstance(error, ImageHostError)
    assert elapsed >= 0.15
    clock.now += 4.0
    elapsed, error = timed(lambda: dns.resolve("x.gone.dead", 80, 2.0))
    assert isinstance(error, ImageHostError)
    assert error.code == "image_host_timeout"
    assert "did not answer 4.0 s ago" in str(error)
    assert elapsed < 0.1
    assert lookup.calls["x.gone.dead"] == 1
    clock.now += 1.5  # past the memory: asked again (the first call still pending is joined)
    lookup.late["x.gone.dead"] = ["93.184.216.34"]
    threading.Timer(0.1, lookup.release.set).start()
    assert dns.resolve("x.gone.dead", 80, 2.0) == ["93.184.216.34"]
    assert lookup.calls["x.gone.dead"] == 1


def test_a_late_answer_clears_the_memory(lookup: FakeSlowLookup) -> None:
    dns = DnsResolver(lookup, unanswered_memory_s=60.0, unanswered_after_s=0.0)
    with pytest.raises(ImageHostError, match="timed out"):
        dns.resolve("late.dead", 80, 0.1)
    lookup.late["late.dead"] = ["93.184.216.34"]
    lookup.release.set()
    assert wait_until(lambda: dns.threads == 0)
    assert dns.resolve("late.dead", 80, 1.0) == ["93.184.216.34"]  # not refused for 60 s


def test_a_caller_short_of_time_marks_nothing(lookup: FakeSlowLookup) -> None:
    dns = DnsResolver(lookup, unanswered_after_s=1.0)
    for _ in range(2):  # the second is asked (and times out), not refused from memory
        elapsed, error = timed(lambda: dns.resolve("x.young.dead", 80, 0.1))
        assert isinstance(error, ImageHostError)
        assert "timed out after 0.1 s" in str(error)
        assert elapsed >= 0.09


def test_every_caller_gets_the_lookups_error(lookup: FakeSlowLookup) -> None:
    dns = DnsResolver(lookup)
    raised: list[BaseException] = []

    def resolve(name: str) -> None:
        try:
            dns.resolve(name, 80, 5.0)
        except OSError as exc:
            raised.append(exc)

    threads = in_threads(resolve, ["gone.dead"] * 3)
    assert wait_until(lambda: lookup.total_calls == 1)
    lookup.release.set()
    for thread in threads:
        thread.join()
    assert len(raised) == 3
    assert len({id(e) for e in raised}) == 3
    assert all(isinstance(e, socket.gaierror) and e.errno == socket.EAI_AGAIN for e in raised)


def test_an_unknown_name_is_an_image_host_error_through_the_fetcher(
    lookup: FakeSlowLookup,
) -> None:
    fetcher = ImageFetcher(policy(), lookup)
    with pytest.raises(ImageHostError, match=r"cannot resolve image host 'nowhere\.test'") as info:
        fetcher.fetch("http://nowhere.test/cat.png")
    assert info.value.code == "image_host_error"


def test_closed_resolver_starts_no_lookups(lookup: FakeSlowLookup) -> None:
    fetcher = ImageFetcher(policy(), DnsResolver(lookup))
    fetcher.close()
    with pytest.raises(ImageHostError, match="shutting down"):
        fetcher.fetch(f"http://{GOOD}/cat.png")
    assert lookup.total_calls == 0


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("images.example.com", "example.com"),
        ("a.b.c.example.com", "example.com"),
        ("example.com", "example.com"),
        ("localhost", "localhost"),
        ("cdn.shop.co.uk", "shop.co.uk"),
        ("x.y.example.com.au", "example.com.au"),
        ("x.evil.io", "evil.io"),
        ("Images.Example.COM.", "example.com"),
        ("bucket.s3.us-west-2.amazonaws.com", "amazonaws.com"),
    ],
)
def test_domain_of_guesses_the_registrable_domain(host: str, domain: str) -> None:
    assert domain_of(host) == domain
