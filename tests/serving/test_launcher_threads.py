"""The launcher sizes TensorFlow's thread pools from the cgroup CPU quota, not the host's CPUs
(a dyno's nproc shows the host's). Fake cgroup trees in tmp_path stand in for /sys/fs/cgroup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving import launcher
from serving.settings import Settings

HOST_CPUS = len(os.sched_getaffinity(0))


def cgroup_tree(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


def test_cgroup_v2_quota_of_the_process_or_a_parent_binds(tmp_path: Path) -> None:
    root, proc = cgroup_tree(
        tmp_path,
        "0::/dyno/web.1\n",
        {"dyno/cpu.max": "150000 100000\n", "dyno/web.1/cpu.max": "max 100000\n"},
    )
    assert launcher.cgroup_cpu_limit(root, proc) == 1.5
    assert launcher.available_cpus(root, proc) == min(2, HOST_CPUS)


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root, proc = cgroup_tree(
        tmp_path,
        "4:memory:/x\n2:cpu,cpuacct:/x\n0::/\n",
        {
            "cpu,cpuacct/x/cpu.cfs_quota_us": "100000\n",
            "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n",
        },
    )
    assert launcher.cgroup_cpu_limit(root, proc) == 1.0
    assert launcher.available_cpus(root, proc) == 1


def test_no_quota_means_the_cpus_the_process_may_run_on(tmp_path: Path) -> None:
    root, proc = cgroup_tree(
        tmp_path,
        "1:cpu:/\n0::/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert launcher.cgroup_cpu_limit(root, proc) is None
    assert launcher.available_cpus(root, proc) == HOST_CPUS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", f"{launcher.available_cpus()}"), ("auto", f"{launcher.available_cpus()}"), ("3", "3")],
)
def test_thread_flags_follow_the_setting(raw: str, expected: str) -> None:
    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": raw})
    assert launcher.thread_flags(settings) == [
        f"--tensorflow_intra_op_parallelism={expected}",
        f"--tensorflow_inter_op_parallelism={expected}",
    ]


def test_zero_threads_leaves_tensorflow_to_choose() -> None:
    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": "0"})
    assert launcher.thread_flags(settings) == []


def test_the_command_line_wins_and_no_flags_file_means_no_automatic_threads() -> None:
    from serving import flags

    settings = Settings.from_env({"DYNOSERVE_MODEL_SERVER_THREADS": "4"})
    argv = flags.with_defaults(
        ["--tensorflow_intra_op_parallelism=1"], launcher.project_defaults(settings)
    )
    assert "--tensorflow_intra_op_parallelism=1" in argv
    assert "--tensorflow_intra_op_parallelism=4" not in argv
    assert "--tensorflow_inter_op_parallelism=4" in argv
    bare = Settings.from_env({"DYNOSERVE_MODEL_SERVER_FLAGS": ""})
    assert launcher.project_defaults(bare) == []
