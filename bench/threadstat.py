"""A process's CPU by kind of thread: time on a CPU, time waiting for one, context switches.

Counters come from /proc/PID/task/TID (schedstat: nanoseconds on the CPU and runnable but
waiting; status: voluntary and involuntary context switches; stat: user and system ticks).
Names come from `py-spy dump`, which prints each Python thread's native id and name: Python 3.11
does not name its threads for the kernel, so /proc says "python" for all of them. Threads
py-spy does not list (grpc's and TensorFlow's own) keep their /proc name. Kinds group the
names (`KINDS`): 552 waitress workers are one line, not 552.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from devtools.processes import REPO_ROOT

PY_SPY = REPO_ROOT / ".venv" / "bin" / "py-spy"

# (pattern matching a whole thread name, kind), first match wins. The gateway's MainThread runs
# waitress's event loop (accept, poll, reads, writes); the model server's only waits.
KINDS: tuple[tuple[str, str], ...] = (
    (r"MainThread", "MainThread"),
    (r"waitress-\d+", "waitress workers"),
    (r"fetch_\d+", "fetch pool"),
    (r"fetch-watchdog", "fetch watchdog"),
    (r"grpc_\d+", "grpc server pool"),
    (r"batch_threads-.*", "batch threads"),
    (r"event_engine|grpc_global_tim|lifeguard", "grpc core (native)"),
    (r"tf_.*", "TensorFlow (native)"),
    (r"python", "native, unnamed"),  # a thread of "python" that py-spy did not list
)
FIELDS = ("on_cpu_ns", "wait_ns", "voluntary", "involuntary", "user_ticks", "system_ticks")

_THREAD = re.compile(r'^Thread (0x[0-9a-fA-F]+|\d+) \((\w+)\): "(.*)"$')
_FRAME = re.compile(r"^\s+(\S.*)$")


class ThreadStat(NamedTuple):
    """One thread's counters since it started."""

    on_cpu_ns: int
    wait_ns: int  # runnable, waiting for a CPU
    voluntary: int  # context switches: the thread blocked (lock, GIL, socket, sleep)
    involuntary: int  # context switches: the scheduler took the CPU away
    user_ticks: int
    system_ticks: int


class DumpThread(NamedTuple):
    """A thread as `py-spy dump` shows it: name, running or not, frames innermost first."""

    name: str
    active: bool
    frames: list[str]


def read_threads(pid: int) -> dict[int, tuple[str, ThreadStat]]:
    """Every live thread of `pid`: its /proc name and counters (threads gone meanwhile left out)."""
    found: dict[int, tuple[str, ThreadStat]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            sched = (task / "schedstat").read_text().split()
            status = (task / "status").read_text()
        except (OSError, ValueError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        after = stat[stat.rindex(")") + 2 :].split()
        switches = dict(re.findall(r"^(\w+)_ctxt_switches:\s+(\d+)$", status, re.M))
        found[int(task.name)] = (
            comm,
            ThreadStat(
                int(sched[0]),
                int(sched[1]),
                int(switches.get("voluntary", 0)),
                int(switches.get("nonvoluntary", 0)),
                int(after[11]),
                int(after[12]),
            ),
        )
    return found


def parse_dump(text: str) -> dict[int, DumpThread]:
    """`py-spy dump`'s threads by native id (decimal, or hex when py-spy printed the pthread)."""
    found: dict[int, DumpThread] = {}
    current: DumpThread | None = None
    for line in text.splitlines():
        match = _THREAD.match(line)
        if match:
            ident, state, name = match.groups()
            current = DumpThread(name, state == "active", [])
            found[int(ident, 16) if ident.startswith("0x") else int(ident)] = current
            continue
        frame = _FRAME.match(line)
        if frame and current is not None:
            current.frames.append(frame.group(1))
        elif not line.strip():
            current = None
    return found


def dump(pid: int, timeout: float = 30.0) -> dict[int, DumpThread]:
    """The threads of `pid` now (py-spy, without pausing the process); {} when py-spy cannot."""
    argv = [str(PY_SPY), "dump", "--nonblocking", "--pid", str(pid)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_dump(done.stdout)


def kind_of(name: str) -> str:
    """The kind of a thread named `name` (Python's name, else /proc's); unknown names as they
    are, trailing digits dropped."""
    for pattern, kind in KINDS:
        if re.fullmatch(pattern, name):
            return kind
    return re.sub(r"[-_]?\d+$", "", name)


def by_kind(
    before: Mapping[int, tuple[str, ThreadStat]],
    after: Mapping[int, tuple[str, ThreadStat]],
    names: Mapping[int, str],
) -> dict[str, dict[str, int]]:
    """Per kind: each counter's growth from `before` to `after` summed over the kind's threads
    (a thread started meanwhile counts from zero; one that ended is lost), and `threads_ran`,
    how many of them were on a CPU at all."""
    found: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys((*FIELDS, "threads"), 0))
    for tid, (comm, stat) in after.items():
        old = before.get(tid, (comm, ThreadStat(0, 0, 0, 0, 0, 0)))[1]
        row = found[kind_of(names.get(tid, comm))]
        for field, now, then in zip(FIELDS, stat, old, strict=True):
            row[field] += now - then
        row["threads"] += 1
        row["threads_ran"] = row.get("threads_ran", 0) + (stat.on_cpu_ns > old.on_cpu_ns)
    return dict(found)
