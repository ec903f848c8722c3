"""The launcher sizes TensorFlow's thread pools from the cgroup CPU quota when there is one, and
caps them when there is none (a Heroku Standard dyno's `nproc` shows its shared host's CPUs).
Fake cgroup trees in tmp_path stand in for /sys/fs/cgroup; where a test needs a host with more
CPUs than this machine has, a FAKE `nproc` (launcher.schedulable_cpus) says 8."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from serving import flags, launcher
from serving.settings import Settings

HOST_CPUS = len(os.sched_getaffinity(0))
SHARED_HOST_CPUS = 8  # what a big shared host's nproc may show a dyno


def cgroup_tree(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


def v1_quota(tmp_path: Path, quota_us: int) -> tuple[Path, Path]:
    """A cgroup v1 `cpu` hierarchy whose group for this process has `quota_us` per 100 ms."""
    return cgroup_tree(
        tmp_path,
        "4:memory:/x\n2:cpu,cpuacct:/x\n0::/\n",
        {
            "cpu,cpuacct/x/cpu.cfs_quota_us": f"{quota_us}\n",
            "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n",
        },
    )


@pytest.fixture
def shared_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE: the process may run on 8 CPUs, as on a shared host with more cores than this one."""
    monkeypatch.setattr(launcher, "schedulable_cpus", lambda: SHARED_HOST_CPUS)


def test_cgroup_v2_quota_of_the_process_or_a_parent_binds(tmp_path: Path) -> None:
    root, proc = cgroup_tree(
        tmp_path,
        "0::/dyno/web.1\n",
        {"dyno/cpu.max": "150000 100000\n", "dyno/web.1/cpu.max": "max 100000\n"},
    )
    assert launcher.cgroup_cpu_limit(root, proc) == 1.5
    assert launcher.auto_threads(root, proc).count == min(2, HOST_CPUS)


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = v1_quota(tmp_path, 100000)
    assert launcher.cgroup_cpu_limit(root, proc) == 1.0
    assert launcher.auto_threads(root, proc).count == 1


def test_no_quota_reads_as_none(tmp_path: Path) -> None:
    root, proc = cgroup_tree(
        tmp_path,
        "1:cpu:/\n0::/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert launcher.cgroup_cpu_limit(root, proc) is None


@pytest.mark.usefixtures("shared_host")
def test_without_a_quota_a_shared_hosts_nproc_is_capped(tmp_path: Path) -> None:
    # A Standard dyno: cpu.shares only, nproc 8. TensorFlow alone would start 8 + 8 threads.
    root, proc = cgroup_tree(tmp_path, "0::/dyno\n", {"dyno/cpu.max": "max 100000\n"})
    choice = launcher.auto_threads(root, proc)
    assert choice.count == launcher.SHARED_CPU_THREADS < SHARED_HOST_CPUS
    assert "no CPU quota" in choice.reason


def test_without_a_quota_a_small_machine_keeps_its_cpus(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert launcher.auto_threads(root, proc).count == min(HOST_CPUS, launcher.SHARED_CPU_THREADS)


@pytest.mark.usefixtures("shared_host")
@pytest.mark.parametrize(("quota_us", "threads"), [(50000, 1), (100000, 1), (400000, 4)])
def test_a_quota_is_respected_rounded_up_and_not_capped(
    tmp_path: Path, quota_us: int, threads: int
) -> None:
    # A quota is a hard cap the dyno owns: 4 CPUs of quota get 4 threads, above the cap
    # for shared hosts; half a CPU still needs one thread.
    root, proc = v1_quota(tmp_path, quota_us)
    choice = launcher.auto_threads(root, proc)
    assert choice.count == threads
    assert "CPU quota" in choice.reason


def test_a_quota_larger_than_nproc_gives_nproc(tmp_path: Path) -> None:
    root, proc = v1_quota(tmp_path, 100000 * (HOST_CPUS + 2))
    assert launcher.auto_threads(root, proc).count == HOST_CPUS


@pytest.mark.usefixtures("shared_host")
@pytest.mark.parametrize(("raw", "expected"), [("3", 3), ("8", 8), ("1", 1)])
def test_an_explicit_count_wins_over_quota_and_cap(tmp_path: Path, raw: str, expected: int) -> None:
    root, proc = v1_quota(tmp_path, 50000)
    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": raw})
    choice = launcher.thread_choice(settings, root, proc)
    assert choice is not None
    assert launcher.thread_flags(choice) == [
        f"--tensorflow_intra_op_parallelism={expected}",
        f"--tensorflow_inter_op_parallelism={expected}",
    ]


@pytest.mark.parametrize("raw", ["", "auto", "AUTO"])
def test_auto_is_the_default(tmp_path: Path, raw: str) -> None:
    root, proc = v1_quota(tmp_path, 100000)
    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": raw})
    assert launcher.thread_choice(settings, root, proc) == launcher.auto_threads(root, proc)


def test_zero_threads_leaves_tensorflow_to_choose() -> None:
    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": "0"})
    assert launcher.thread_choice(settings) is None
    assert launcher.thread_flags(None) == []


def test_the_command_line_wins_and_no_flags_file_means_no_automatic_threads() -> None:
    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": "4"})
    argv = flags.with_defaults(
        ["--tensorflow_intra_op_parallelism=1"],
        launcher.project_defaults(settings, launcher.thread_choice(settings)),
    )
    assert "--tensorflow_intra_op_parallelism=1" in argv
    assert "--tensorflow_intra_op_parallelism=4" not in argv
    assert "--tensorflow_inter_op_parallelism=4" in argv
    bare = Settings.from_env({"DYNOSERVE_MODEL_SERVER_FLAGS": ""})
    assert launcher.project_defaults(bare, launcher.thread_choice(bare)) == []


def run_launcher_for_stock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quota: float | None
) -> list[str]:
    """launcher.main with a FAKE stock binary (an executable file it never runs: exec is
    intercepted), on a fake 8-CPU host whose cgroup has `quota` CPUs; returns the exec'd argv."""
    binary = tmp_path / "tensorflow_model_server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("DYNOSERVE_MODEL_SERVER_BIN", str(binary))
    monkeypatch.setattr(launcher, "cgroup_cpu_limit", lambda *_: quota)
    monkeypatch.setattr(launcher.signal, "signal", lambda *_: None)  # keep pytest's SIGTERM
    executed: list[str] = []
    monkeypatch.setattr(launcher.os, "execv", lambda _path, argv: executed.extend(argv))
    assert launcher.main(["--port=8500"]) == 0
    assert executed[0] == str(binary)
    return executed


@pytest.mark.usefixtures("shared_host")
@pytest.mark.parametrize(("quota", "threads"), [(None, launcher.SHARED_CPU_THREADS), (1.0, 1)])
def test_the_stock_binary_gets_the_same_decision(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    quota: float | None,
    threads: int,
) -> None:
    with caplog.at_level(logging.INFO, logger="serving.launcher"):
        argv = run_launcher_for_stock(tmp_path, monkeypatch, quota)
    assert f"--tensorflow_intra_op_parallelism={threads}" in argv
    assert f"--tensorflow_inter_op_parallelism={threads}" in argv
    assert f"TensorFlow threads: {threads} (" in caplog.text


@pytest.mark.usefixtures("shared_host")
def test_no_thread_flags_and_no_thread_log_line_when_the_flags_file_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DYNOSERVE_MODEL_SERVER_FLAGS", "")
    with caplog.at_level(logging.INFO, logger="serving.launcher"):
        argv = run_launcher_for_stock(tmp_path, monkeypatch, None)
    assert not [arg for arg in argv if "_op_parallelism" in arg]
    assert "TensorFlow threads" not in caplog.text
