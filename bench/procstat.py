"""CPU time and memory of the processes under test, read from /proc, and what else used the CPU.

Processes are the trees below given roots (devtools.dynostack's `descendants`), grouped by role
(gateway, model server, nginx, ...) from their command lines by rules such as devtools.dynostack's
`ROLES`; a step's CPU per role is the difference of two snapshots, RSS the largest sum seen while
sampling.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from devtools.dynostack import descendants

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PROC = Path("/proc")

Roles = Callable[[], dict[int, str]]


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process; None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    try:
        return int((PROC / str(pid) / "statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


def machine_busy_seconds() -> tuple[float, int]:
    """(CPU seconds all cores spent not idle since boot, number of CPUs) from /proc/stat."""
    lines = (PROC / "stat").read_text().splitlines()
    values = [int(v) for v in lines[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    busy = sum(values[:8]) - idle  # user..steal; guest time is already inside user
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / TICKS, cpus


def role_of(pid: int, rules: Iterable[tuple[str, str]]) -> str:
    """The first role whose marker is in the process's command line, else its program name."""
    line = cmdline(pid)
    for marker, role in rules:
        if marker in line:
            return role
    return Path(line.split(" ", 1)[0]).name or f"pid {pid}"


def roles_under(roots: dict[int, str], rules: Iterable[tuple[str, str]]) -> Roles:
    """A callable mapping every live pid under `roots` to its role (rules first, then root's)."""
    rules = list(rules)

    def current() -> dict[int, str]:
        found: dict[int, str] = {}
        for root, default in roots.items():
            for pid in [root, *descendants(root)]:
                role = role_of(pid, rules)
                found[pid] = role if any(role == r for _, r in rules) else default
        return found

    return current


def rss_by_role(roles: dict[int, str]) -> dict[str, int]:
    """Resident bytes now, summed per role."""
    per_role: dict[str, int] = defaultdict(int)
    for pid, role in roles.items():
        per_role[role] += rss_bytes(pid)
    return dict(per_role)


def rss_mb_by_role(roles: dict[int, str]) -> dict[str, float]:
    return {role: round(b / 2**20, 1) for role, b in rss_by_role(roles).items()}


@dataclass
class StepUsage:
    """CPU seconds and peak RSS per role during one step, and the machine's busy time."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    machine_busy_s: float = 0.0
    cpus: int = 1
    extra_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def measured_cpu_s(self) -> float:
        return sum(self.cpu_s.values()) + sum(self.extra_cpu_s.values())

    @property
    def other_cpu_s(self) -> float:
        """CPU time the machine spent outside the measured processes during the step."""
        return max(0.0, self.machine_busy_s - self.measured_cpu_s)


class Sampler:
    """Snapshots CPU at start and stop and samples RSS every `interval` seconds in between."""

    def __init__(self, roles: Roles, interval: float = 0.5) -> None:
        self.roles = roles
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._start_cpu: dict[int, float] = {}
        self._rss: dict[str, int] = defaultdict(int)
        self._busy0 = 0.0

    def start(self) -> Sampler:
        self._start_cpu = _cpu_by_pid(self.roles())
        self._busy0, _ = machine_busy_seconds()
        self._take_rss()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._take_rss()

    def _take_rss(self) -> None:
        for role, total in rss_by_role(self.roles()).items():
            self._rss[role] = max(self._rss[role], total)

    def stop(self) -> StepUsage:
        busy, cpus = machine_busy_seconds()
        roles = self.roles()
        end_cpu = _cpu_by_pid(roles)
        self._stop.set()
        self._thread.join()
        # A step shorter than the interval would otherwise have no RSS for a role at all.
        self._take_rss()
        usage = StepUsage(machine_busy_s=busy - self._busy0, cpus=cpus)
        for pid, seconds in end_cpu.items():
            role = roles[pid]
            used = seconds - self._start_cpu.get(pid, 0.0)
            usage.cpu_s[role] = usage.cpu_s.get(role, 0.0) + used
            usage.processes[role] = usage.processes.get(role, 0) + 1
        usage.rss_mb = {role: round(b / 2**20, 1) for role, b in self._rss.items()}
        return usage


def _cpu_by_pid(roles: dict[int, str]) -> dict[int, float]:
    found = {}
    for pid in roles:
        seconds = cpu_seconds(pid)
        if seconds is not None:
            found[pid] = seconds
    return found
