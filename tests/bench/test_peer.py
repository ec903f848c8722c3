"""bench/peer.py and bench/peer_report.py without BentoML or a model: arguments, the alternating
order, the client groups, the summary and the table, the peer's virtualenv stamp."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import peer, peer_report
from bench.loadclient import client_address


def test_defaults_are_the_issue_table_steps_and_the_documented_batching() -> None:
    args = peer.parse_args([])
    assert args.clients == [1, 32, 100]
    assert (args.seconds, args.rounds) == (10.0, 2)
    assert args.peer == peer.PeerSettings(max_batch_size=8, max_latency_ms=10_000, tf_threads=2)
    assert args.results == peer.RESULTS


def test_arguments_are_parsed_and_checked() -> None:
    args = peer.parse_args(["--clients", "1,8", "--rounds", "3", "--max-batch-size", "16"])
    assert (args.clients, args.rounds, args.peer.max_batch_size) == ([1, 8], 3, 16)
    for bad in (
        ["--clients", "1,x"],
        ["--clients", "0"],
        ["--rounds", "0"],
        ["--max-batch-size", "1"],
    ):
        with pytest.raises(SystemExit):
            peer.parse_args(bad)


def test_lone_clients_first_then_the_load_then_a_lone_client_again() -> None:
    order = [tuple(step) for step in peer.schedule([1, 32, 100], 2)]
    assert order == [
        ("lone", 0, 1, "dynoserve"), ("lone", 0, 1, "peer"),
        ("lone", 1, 1, "peer"), ("lone", 1, 1, "dynoserve"),
        ("load", 0, 32, "dynoserve"), ("load", 0, 32, "peer"),
        ("load", 0, 100, "peer"), ("load", 0, 100, "dynoserve"),
        ("load", 1, 32, "peer"), ("load", 1, 32, "dynoserve"),
        ("load", 1, 100, "dynoserve"), ("load", 1, 100, "peer"),
        ("after", 0, 1, "dynoserve"), ("after", 0, 1, "peer"),
    ]  # fmt: skip
    # Each system goes first once per count over two rounds, with any number of counts.
    firsts = [step for i, step in enumerate(peer.schedule([8, 32, 64], 2)) if i % 2 == 0]
    assert sorted((s.clients, s.system) for s in firsts) == [
        (8, "dynoserve"), (8, "peer"), (32, "dynoserve"), (32, "peer"), (64, "dynoserve"),
        (64, "peer"),
    ]  # fmt: skip
    assert all(s.phase == "load" for s in peer.schedule([8, 32, 64], 2))


def test_clients_are_spread_over_the_photos_with_addresses_of_their_own() -> None:
    urls = [f"http://127.0.0.1:9/photo-{i}.jpg" for i in range(8)]
    load = peer.keep_alive_load("http://127.0.0.1:9999/classify", urls, 10)
    posted = [json.loads(load.bodies[i % len(load.bodies)])["image_url"] for i in range(10)]
    assert posted == [urls[i % 8] for i in range(10)]
    used = [load.addresses[i % len(load.addresses)] for i in range(10)]
    assert used == [client_address(i) for i in range(10)]
    assert (load.clients, load.port, load.path) == (10, 9999, "/classify")


def test_cpu_of_a_system_counts_its_own_processes_only() -> None:
    cpu = {"gateway": 2.0, "model server": 5.0, "sync": 0.5, "peer": 7.0, "nginx": 1.0}
    assert peer.system_cpu_s(cpu, "dynoserve") == 7.5
    assert peer.system_cpu_s(cpu, "peer") == 7.0


def step(
    system: str, clients: int, ok_per_s: float, p50: float, failed: int = 0, phase: str = ""
) -> dict:
    return {
        "phase": phase or ("lone" if clients == 1 else "load"),
        "system": system,
        "clients": clients,
        "ok_per_s": ok_per_s,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "failed": failed,
        "cpu_ms_per_request": 10.0,
        "load_average": [1.5, 2.5],
        "other_cpu_share": 0.02,
    }


STEPS = [
    step("dynoserve", 1, 35.0, 28.0),
    step("peer", 1, 38.0, 26.0),
    step("dynoserve", 32, 66.0, 480.0),
    step("peer", 32, 58.0, 550.0),
    step("dynoserve", 100, 60.0, 1600.0),
    step("peer", 100, 61.0, 1580.0, failed=2),
    step("dynoserve", 1, 37.0, 30.0),
    step("peer", 1, 36.0, 27.0),
    step("dynoserve", 32, 68.0, 470.0),
    step("peer", 32, 57.0, 560.0),
    step("dynoserve", 100, 58.0, 1700.0),
    step("peer", 100, 63.0, 1500.0, failed=1),
    step("dynoserve", 1, 36.0, 31.0, phase="after"),
    step("peer", 1, 0.5, 2100.0, failed=4, phase="after"),
]


def test_summary_means_the_rounds_and_finds_the_best_step() -> None:
    summary = peer_report.summarize(STEPS, [1, 32, 100])
    dyno, bento = summary["dynoserve"], summary["peer"]
    assert dyno["one_client_p50_ms"] == 29.0
    assert (dyno["best_ok_per_s"], dyno["best_clients"]) == (67.0, 32)
    assert (dyno["most_clients_ok_per_s"], dyno["most_clients_p50_ms"]) == (59.0, 1650.0)
    assert (dyno["failed"], dyno["one_client_after_load_p50_ms"]) == (0, 31.0)
    assert (bento["best_ok_per_s"], bento["best_clients"]) == (62.0, 100)
    assert (bento["one_client_p50_ms"], bento["ok_per_s"]["1"]) == (26.5, 37.0)
    assert (bento["failed"], bento["one_client_after_load_p50_ms"]) == (7, 2100.0)


def results() -> dict[str, Any]:
    limit = {"jpeg": {"batch1_p50_ms": 18.0, "batch32_images_per_s": 90.0}}
    later = {"jpeg": {"batch1_p50_ms": 19.0, "batch32_images_per_s": 88.0}}
    return {
        "started": "2026-12-08T10:00:00+00:00",
        "machine": {"cpu": "Some CPU", "cpus": 2},
        "settings": {
            "seconds": 10.0,
            "clients": [1, 32, 100],
            "rounds": 2,
            "peer": {"max_batch_size": 8, "max_latency_ms": 10000, "tf_threads": 2},
        },
        "peer_version": "1.4.40",
        "limit": [limit, later],
        "steps": STEPS,
        "summary": peer_report.summarize(STEPS, [1, 32, 100]),
    }


def test_table_rows_for_the_limit_and_both_systems() -> None:
    table = peer_report.render_table(results())
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| | 1 client p50 | best ok/s | 100 clients ok/s |")
    assert rows[1] == (
        "| the model in-process (limit) | 18.5 ms | 89 img/s (batch 32) | - | - | - | - | - |"
    )
    assert rows[2] == (
        "| Dynoserve (`make run`) | 29 ms | 67 (c=32) | 59 | 1650 ms / 3300 ms | 31 ms | 0 "
        "| 10 / 10 |"
    )
    assert rows[3].startswith("| BentoML 1.4.40 (TF in-process, adaptive batching max 8, ")
    assert rows[3].endswith(
        "| 26.5 ms | 62 (c=100) | 62 | 1540 ms / 3080 ms | 2100 ms | 7 | 10 / 10 |"
    )
    assert "Load average 1.5-2.5" in table
    assert "at most 2 % of the CPUs" in table


def test_peer_environment_keeps_bentoml_home_in_the_run_and_reports_nothing(
    tmp_path: Path,
) -> None:
    env = peer.peer_env(tmp_path / "m" / "1", tmp_path, peer.PeerSettings(max_batch_size=4))
    assert env["PEER_MODEL_DIR"] == str(tmp_path / "m" / "1")
    assert (env["PEER_MAX_BATCH_SIZE"], env["PEER_TF_THREADS"]) == ("4", "2")
    assert env["BENTOML_HOME"] == str(tmp_path / "bentoml-home")
    assert env["BENTOML_DO_NOT_TRACK"] == "True"
    assert "PYTHONPATH" not in env


def test_the_peer_venv_is_installed_once_per_version_of_the_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(list(argv)))
    requirements = tmp_path / "peer.txt"
    requirements.write_text("bentoml==1.4.40\n")
    venv = tmp_path / "venv"
    venv.mkdir()
    assert peer.ensure_peer_venv(venv, requirements) == venv / "bin" / "bentoml"
    assert calls[0][:4] == [sys.executable, "-m", "venv", "--clear"]
    assert ["install", "--quiet", "-r", str(requirements)] == calls[2][-4:]
    assert calls[3][-1] == "check"
    calls.clear()
    peer.ensure_peer_venv(venv, requirements)
    assert calls == []  # the stamp matches: nothing to do
    requirements.write_text("bentoml==1.4.41\n")
    peer.ensure_peer_venv(venv, requirements)
    assert len(calls) == 4  # a changed file installs again
