"""One dyno in a container, started with `deploy.image.run_argv` (what `make image-run` runs):
its logs, readiness, processes as the host sees them, and the memory its cgroup charged."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

from deploy.image import Engine, RunOptions, run_argv
from devtools.dynostack import descendants
from tests.support import http_ok, port_open, wait_for

# cgroup v1 memory files, as runc mounts the container's own cgroup at /sys/fs/cgroup/memory;
# cgroup v2 names where the host has no v1 memory controller.
CGROUP_V1 = "/sys/fs/cgroup/memory/"
MEMORY_FILES = {
    "limit": ("memory.limit_in_bytes", "memory.max"),
    "peak": ("memory.max_usage_in_bytes", "memory.peak"),
    "usage": ("memory.usage_in_bytes", "memory.current"),
}
MIB = 1024 * 1024


@dataclass
class MemoryReport:
    """What the container's memory cgroup says (bytes); oom_kills from memory.oom_control."""

    limit: int
    peak: int
    usage: int
    rss: int
    cache: int
    oom_kills: int

    def mib(self) -> dict[str, int]:
        fields = {"limit": self.limit, "peak": self.peak, "rss": self.rss, "cache": self.cache}
        return {f"{k}_mib": v // MIB for k, v in fields.items()} | {"oom_kills": self.oom_kills}


class Container:
    """A detached container running the image's CMD as a dyno (see deploy.image.RunOptions)."""

    def __init__(self, engine: Engine, options: RunOptions) -> None:
        self.engine = engine
        self.options = options
        options.name = options.name or f"dynoserve-test-{uuid.uuid4().hex[:8]}"
        options.detach = True
        self.name = options.name
        self.port = options.port
        self.base = f"http://127.0.0.1:{self.port}"
        self.started_at = 0.0
        self._logs = ""

    def start(self) -> Container:
        self.started_at = time.monotonic()
        argv = run_argv(self.engine, self.options)
        # Keep the container after it exits (no --rm): its exit code, OOM flag and logs are read.
        argv.remove("--rm")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return self

    def logs(self) -> str:
        done = self.engine.run("logs", self.name, capture_output=True, timeout=60)
        if done.returncode == 0:
            self._logs = done.stdout + done.stderr
        return self._logs

    def inspect(self) -> dict[str, Any]:
        done = self.engine.run("inspect", self.name, capture_output=True, timeout=60)
        if done.returncode != 0:
            return {}
        return dict(json.loads(done.stdout)[0])

    def state(self) -> dict[str, Any]:
        return dict(self.inspect().get("State", {}))

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def host_pid(self) -> int:
        return int(self.state()["Pid"])

    def host_pids(self) -> list[int]:
        """PID 1 of the container and every process below it, as host pids."""
        root = self.host_pid()
        return [root, *descendants(root)]

    def wait_port(self, timeout: float) -> float:
        wait_for(lambda: self._check_running() and port_open(self.port), timeout, 0.05, "$PORT")
        return time.monotonic() - self.started_at

    def wait_ready(self, timeout: float) -> float:
        """Seconds from `run` until /readyz answers 200."""
        try:
            wait_for(lambda: self._check_running() and http_ok(self.base + "/readyz"), timeout, 0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- container log ---\n{self.logs()[-5000:]}") from exc
        return time.monotonic() - self.started_at

    def _check_running(self) -> bool:
        if not self.running():
            raise RuntimeError(f"the container exited early:\n{self.logs()[-5000:]}")
        return True

    def exec(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        who = ["--user", user or f"{self.options.uid}:{self.options.uid}"]
        return self.engine.run("exec", *who, self.name, *argv, capture_output=True, timeout=120)

    def read_cgroup(self, names: tuple[str, str]) -> str:
        for name in names:
            done = self.exec("cat", CGROUP_V1 + name)
            if done.returncode != 0:
                done = self.exec("cat", "/sys/fs/cgroup/" + name)
            if done.returncode == 0:
                return done.stdout.strip()
        raise AssertionError(f"no cgroup file {names}")

    def memory(self) -> MemoryReport:
        values = {key: int(self.read_cgroup(names)) for key, names in MEMORY_FILES.items()}
        stat = dict(
            line.split() for line in self.read_cgroup(("memory.stat", "memory.stat")).splitlines()
        )
        oom = dict(
            line.split()
            for line in self.read_cgroup(("memory.oom_control", "memory.events")).splitlines()
        )
        return MemoryReport(
            limit=values["limit"],
            peak=values["peak"],
            usage=values["usage"],
            rss=int(stat.get("total_rss", stat.get("anon", 0))),
            cache=int(stat.get("total_cache", stat.get("file", 0))),
            oom_kills=int(oom.get("oom_kill", 0)),
        )

    def wait_exit(self, timeout: float) -> int:
        wait_for(lambda: not self.running(), timeout, 0.05, "the container to exit")
        return int(self.state().get("ExitCode", -1))

    def remove(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.logs()
            self.engine.run(
                "rm", "--force", "--time", "0", self.name, capture_output=True, timeout=60
            )
