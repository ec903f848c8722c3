"""Boot to ready the way the image boots, then the model server SIGKILLed under load."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.dynostack import Dyno
from devtools.load import Load
from serving.launcher import auto_threads
from tests.dyno.conftest import RESULTS
from tests.dyno.stack import DYNO_UID, Layout, programs, uid_of
from tests.support import REPO_ROOT, http_json, wait_for

pytestmark = pytest.mark.slow

PORT_DEADLINE_S = 5.0  # the bound; Heroku's R10 allows 60 s


# Resident memory bounds of the dyno's Python processes (Standard-1X has 512 MB for all of it,
# stock TF Serving and the models included): a regression such as TensorFlow imported into the
# gateway or sync shows here.
RSS_BOUND_MB = {"entrypoint": 40, "supervisord": 60, "sync": 120, "gateway": 120}


@dataclass
class Booted:
    dyno: Dyno
    layout: Layout
    port_s: float
    ready_s: float
    idle_rss_mb: dict[str, float]


@pytest.fixture(scope="module")
def booted(make_dyno: Callable[..., Dyno], make_layout: Callable[[], Layout]) -> Booted:
    layout = make_layout()
    dyno = make_dyno(layout)
    port_s = dyno.wait_port(timeout=30)
    ready_s = dyno.wait_ready()
    RESULTS.append(
        {"fault": "boot", "port_bound_s": round(port_s, 2), "ready_s": round(ready_s, 1)}
    )
    time.sleep(2.0)  # let start-up settle before reading idle memory
    idle = memory_mb(dyno, "VmRSS")
    RESULTS.append({"memory": "idle VmRSS MB", **idle})
    return Booted(dyno, layout, port_s, ready_s, idle)


def memory_mb(dyno: Dyno, field: str) -> dict[str, float]:
    """`field` of /proc/<pid>/status (VmRSS now, VmHWM peak) per process of the dyno, in MB."""
    found = {}
    for role, pid in programs(dyno).items():
        status = Path(f"/proc/{pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith(field + ":"))
        found[role] = round(int(line.split()[1]) / 1024, 1)
    return found


def test_binds_port_within_5s_and_becomes_ready(booted: Booted) -> None:
    assert booted.port_s < PORT_DEADLINE_S, booted.dyno.log()[-3000:]
    status, _, body = http_json(booted.dyno.base + "/readyz")
    assert status == 200, body
    assert body["models"] == {"shapes": "AVAILABLE"}
    assert body["sync"]["boot_completed_at"]


def test_runs_as_the_dyno_user_with_every_program(booted: Booted) -> None:
    roles = programs(booted.dyno)
    assert set(roles) == {"entrypoint", "supervisord", "sync", "model_server", "gateway"}, roles
    assert {role: uid_of(pid) for role, pid in roles.items()} == dict.fromkeys(roles, DYNO_UID)


def test_every_program_logs_to_the_stdout_pipe_of_another_user(booted: Booted) -> None:
    log = booted.dyno.log()
    assert "spawnerr" not in log, log[-3000:]
    assert "EACCES" not in log
    assert " sync INFO syncing s3://" in log  # sync
    assert "Running gRPC ModelServer at" in log  # model server
    assert '"logger": "gateway.server", "request_id": "-", "message": "listening on' in log


def test_the_entrypoint_makes_the_run_dir_and_the_app_dir_stays_untouched(booted: Booted) -> None:
    run_dir = booted.layout.run_dir
    assert (run_dir / "supervisord.pid").exists()
    assert run_dir.stat().st_uid == DYNO_UID
    assert os.stat(REPO_ROOT).st_mode & 0o022 == 0, "the app dir must be read-only to the dyno"
    # The local stand-in imports Keras (TensorFlow does), which imports matplotlib, which wants
    # a cache under HOME: a fact of the stand-in only (the image runs stock TF Serving).
    lines = [line for line in booted.dyno.log().splitlines() if "matplotlib" not in line]
    assert not [line for line in lines if "Permission denied" in line or "Read-only" in line]


def test_the_model_server_threads_follow_the_cpu_quota(booted: Booted) -> None:
    pid = programs(booted.dyno)["model_server"]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().decode().split("\0")
    cpus = auto_threads().count
    assert f"--tensorflow_intra_op_parallelism={cpus}" in argv
    assert f"--tensorflow_inter_op_parallelism={cpus}" in argv


def test_model_server_sigkilled_under_load_recovers_without_a_gateway_restart(
    booted: Booted,
) -> None:
    dyno = booted.dyno
    before = programs(dyno)
    load = Load(dyno.port, clients=4, stop_when_refused=False).start()
    try:
        wait_for(lambda: load.counts()["ok"] >= 20, timeout=30, what="load to warm up")
        killed_at = time.monotonic()
        os.kill(before["model_server"], signal.SIGKILL)
        wait_for(lambda: load.counts(after=killed_at)["shed"] >= 1, timeout=30, what="a 503")
        wait_for(lambda: _ok_after_last_shed(load, killed_at), timeout=90, what="recovery")
        time.sleep(1.0)  # a second of load after recovery
    finally:
        load.stop()
    after = programs(dyno)
    recovery = _recovery_s(load, killed_at)
    counts = load.counts()
    RESULTS.append({"fault": "model server SIGKILL", **counts, "recovery_s": round(recovery, 1)})
    assert after["gateway"] == before["gateway"], "the gateway must not restart"
    assert after["model_server"] != before["model_server"], "supervisord restarts it"
    assert (counts["failed"], counts["lost"]) == (0, 0), load.problems()[:5]
    assert counts["refused"] == 0


def _ok_after_last_shed(load: Load, since: float) -> bool:
    outcomes = [o for o in load.outcomes if o.started >= since]
    sheds = [o.ended for o in outcomes if o.kind == "shed"]
    return bool(sheds) and any(o.kind == "ok" and o.started > max(sheds) for o in outcomes)


def _recovery_s(load: Load, since: float) -> float:
    """From the fault to the first success after the last 503."""
    outcomes = [o for o in load.outcomes if o.started >= since]
    last_shed = max(o.ended for o in outcomes if o.kind == "shed")
    first_ok = min(o.ended for o in outcomes if o.kind == "ok" and o.started > last_shed)
    return first_ok - since


def test_the_python_processes_stay_small_idle_and_under_load(booted: Booted) -> None:
    """Runs after the load of the test above: VmHWM is each process's peak so far."""
    peak = memory_mb(booted.dyno, "VmHWM")
    RESULTS.append({"memory": "peak VmHWM MB (after load)", **peak})
    for role, bound in RSS_BOUND_MB.items():
        assert booted.idle_rss_mb[role] < bound, (role, booted.idle_rss_mb)
        assert peak[role] < bound, (role, peak)
