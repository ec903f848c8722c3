"""bench.threadstat and bench.siege_profile: thread names from py-spy's dump, kinds, per-kind
counters between two readings, per-answer figures, medians over rounds."""

from __future__ import annotations

import argparse
import os
import threading

import pytest

from bench import siege_profile, threadstat
from bench.threadstat import ThreadStat

DUMP = """\
Process 30976: /work/main/.venv-gateway/bin/python -m gateway
Python v3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3.11)

Thread 30976 (active): "MainThread"
    poll2 (waitress/wasyncore.py:213)
    loop (waitress/wasyncore.py:244)
Thread 30983 (idle): "waitress-0"
    Condition.wait (threading.py:327)
    ThreadedTaskDispatcher.handler_thread (waitress/task.py:71)
Thread 0x7f3a2c1fe6c0 (active): "fetch_3"
    _fetch_hop (gateway/fetch.py:310)

"""


def test_parse_dump_names_threads_by_native_id_with_their_frames() -> None:
    threads = threadstat.parse_dump(DUMP)
    assert set(threads) == {30976, 30983, 0x7F3A2C1FE6C0}
    main = threads[30976]
    assert (main.name, main.active) == ("MainThread", True)
    assert main.frames == ["poll2 (waitress/wasyncore.py:213)", "loop (waitress/wasyncore.py:244)"]
    assert threads[30983].active is False
    assert threads[0x7F3A2C1FE6C0].frames == ["_fetch_hop (gateway/fetch.py:310)"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("MainThread", "MainThread"),
        ("waitress-471", "waitress workers"),
        ("fetch_12", "fetch pool"),
        ("fetch-watchdog", "fetch watchdog"),
        ("grpc_7", "grpc server pool"),
        ("event_engine", "grpc core (native)"),
        ("grpc_global_tim", "grpc core (native)"),
        ("tf_Compute", "TensorFlow (native)"),
        ("python", "native, unnamed"),
        ("Thread-2 (_serve)", "Thread-2 (_serve)"),
        ("worker-12", "worker"),
    ],
)
def test_kind_of(name: str, kind: str) -> None:
    assert threadstat.kind_of(name) == kind


def _stat(cpu: int, wait: int = 0, vol: int = 0, invol: int = 0) -> ThreadStat:
    return ThreadStat(cpu, wait, vol, invol, cpu // 10, cpu // 20)


def test_by_kind_sums_growth_per_kind_and_counts_new_threads_from_zero() -> None:
    before = {1: ("python", _stat(100, 5, 1, 0)), 2: ("python", _stat(50)), 3: ("python", _stat(7))}
    after = {
        1: ("python", _stat(300, 15, 4, 1)),
        2: ("python", _stat(50)),  # a worker that did not run
        3: ("python", _stat(9)),
        4: ("python", _stat(40, 2, 2, 0)),  # a worker started during the step
        9: ("event_engine", _stat(20)),
    }
    names = {1: "waitress-0", 2: "waitress-1", 3: "MainThread", 4: "waitress-2"}
    kinds = threadstat.by_kind(before, after, names)
    workers = kinds["waitress workers"]
    assert workers["on_cpu_ns"] == 200 + 0 + 40
    assert workers["wait_ns"] == 12
    assert (workers["voluntary"], workers["involuntary"]) == (5, 1)
    assert (workers["threads"], workers["threads_ran"]) == (3, 2)
    assert kinds["MainThread"]["on_cpu_ns"] == 2
    assert kinds["grpc core (native)"]["on_cpu_ns"] == 20


def test_read_threads_sees_this_process_and_a_busy_thread_grow() -> None:
    done = threading.Event()
    ident: list[int] = []

    def spin() -> None:
        ident.append(threading.get_native_id())
        while not done.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        while not ident:
            done.wait(0.01)
        first = threadstat.read_threads(os.getpid())
        assert ident[0] in first
        while True:  # on a CPU again later: schedstat counts up, never down
            later = threadstat.read_threads(os.getpid())
            if later[ident[0]][1].on_cpu_ns > first[ident[0]][1].on_cpu_ns:
                break
    finally:
        done.set()
        thread.join()
    assert later[ident[0]][1].voluntary >= first[ident[0]][1].voluntary


def _snapshot(ticks: int, cpu_ns: int, fetched: float, siege_s: float) -> dict:
    return {
        "time": ticks / 100,
        "counters": {"fetched": fetched, "images": fetched, "batches": fetched / 4},
        "machine": dict.fromkeys(siege_profile._MACHINE, ticks),
        "processes": {"gateway": [ticks, ticks // 2], "model server": [2 * ticks, 0]},
        "siege": [siege_s, 0.0],
        "runner": [0.0, 0.0],
        "threads": {
            "gateway": {7: ("python", _stat(cpu_ns, cpu_ns // 2, int(fetched), 0))},
            "model server": {},
        },
    }


def test_difference_is_per_answered_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(siege_profile.procstat, "TICKS", 100)
    before = _snapshot(ticks=1000, cpu_ns=10**9, fetched=10, siege_s=1.0)
    after = _snapshot(ticks=1400, cpu_ns=3 * 10**9, fetched=60, siege_s=1.5)
    found = siege_profile.difference(before, after, ok=40, names={"gateway": {7: "MainThread"}})
    # 400 user ticks and 200 system ticks = 4 s + 2 s over 40 answers
    assert found["processes_ms"]["gateway"] == {"user": 100.0, "system": 50.0, "total": 150.0}
    assert found["processes_ms"]["model server"]["total"] == 200.0
    assert found["processes_ms"]["siege"]["total"] == 12.5
    assert found["machine_ms"]["idle"] == 100.0
    main = found["threads"]["gateway"]["MainThread"]
    assert (main["cpu_ms"], main["wait_ms"], main["voluntary"]) == (50.0, 25.0, 1.25)
    assert found["work"]["fetched"] == 50
    record = {"ok": 40, **found}
    # gateway 150 ms per answer over 50 fetches for 40 answers: 120 ms per fetch
    assert siege_profile.derived(record) == {
        "fetched_per_ok": 1.25,
        "gateway_ms_per_fetch": 120.0,
        "server_ms_per_image": 160.0,
        "images_per_batch": 4.0,
    }


def test_summarize_takes_medians_per_variant_and_client_count_over_the_rounds() -> None:
    def step(variant: str, clients: int, ms: float, **extra: object) -> dict:
        return {"variant": variant, "clients": clients, "ok": 10, "x": {"ms": ms}, **extra}

    steps = [
        step("default", 32, 1.0, round=1),
        step("default", 32, 5.0, round=2),
        step("default", 32, 2.0, round=3),
        step("default", 100, 9.0, round=1),
        step("default", 100, 99.0),  # outside the rounds
        step("b", 32, 4.0, round=1),
    ]
    summary = siege_profile.summarize(steps)
    assert summary["default c32"]["x"] == {"ms": 2.0}
    assert summary["default c100"]["x"] == {"ms": 9.0}
    assert summary["b c32"]["variant"] == "b"


def test_parse_variant() -> None:
    assert siege_profile.parse_variant("poll:DYNOSERVE_MAX_QUEUE=64,DYNOSERVE_THREADS=100") == (
        "poll",
        {"DYNOSERVE_MAX_QUEUE": "64", "DYNOSERVE_THREADS": "100"},
    )
    for bad in ("poll", "poll:", ":DYNOSERVE_X=1", "poll:PATH=/bin"):
        with pytest.raises(argparse.ArgumentTypeError):
            siege_profile.parse_variant(bad)


def test_order_reverses_every_other_round_when_asked() -> None:
    assert [siege_profile.order([32, 64, 100], i, True) for i in range(3)] == [
        [32, 64, 100],
        [100, 64, 32],
        [32, 64, 100],
    ]
    assert siege_profile.order([32, 100], 1, False) == [32, 100]


def test_table_has_a_row_per_step_with_the_gateway_threads() -> None:
    def step(gateway_ms: float) -> dict:
        kinds = {"MainThread": {"cpu_ms": 1.5, "voluntary": 4, "involuntary": 2}}
        return {
            "ok_per_s": 30.0,
            "processes_ms": {
                "gateway": {"total": gateway_ms, "system": 2.0},
                "model server": {"total": 40.0},
                "siege": {"total": 0.5},
            },
            "derived": {"fetched_per_ok": 1.3, "gateway_ms_per_fetch": gateway_ms / 1.3},
            "threads": {"gateway": kinds},
        }

    rows = siege_profile.table({"default c32": step(6.5), "default c100": step(13.0)})
    assert len(rows) == 4
    assert rows[2].startswith("| default c32 | 30.0 | 1.3 | 6.5 (2.0) | 5.0 | 40.0 |")
    assert rows[3].split(" | ")[4] == "10.0"
    assert rows[3].endswith("| MainThread 1.50, 4 + 2 |")


def test_counter_sums_the_series_whose_labels_match_every_part() -> None:
    page = "\n".join(
        [
            "# HELP dynoserve_gateway_requests_total Requests.",
            'dynoserve_gateway_requests_total{route="/readyz",status="200"} 7.0',
            'dynoserve_gateway_requests_total{model="m",route="/v1/models/<model>:predict",'
            'status="200",version="1"} 40.0',
            'dynoserve_gateway_requests_total{model="m",route="/v1/models/<model>:predict",'
            'status="499",version=""} 3.0',
            'dynoserve_gateway_requests_total{model="n",route="/v1/models/<model>:predict",'
            'status="200",version="2"} 2.0',
            "dynoserve_gateway_abandoned_requests_total 3.0",
        ]
    )
    assert (
        siege_profile._counter(page, "dynoserve_gateway_requests_total", siege_profile.ANSWERED)
        == 42.0
    )
    assert siege_profile._counter(page, "dynoserve_gateway_requests_total") == 52.0
    assert siege_profile._counter(page, "dynoserve_gateway_abandoned_requests_total") == 3.0
    assert siege_profile._counter(page, "no_such_total") == 0.0
