"""Two dynos and a router on loopback.

Each dyno is the whole stack as `make run` starts it: `python -m dyno` (supervisord with
supervisord.conf: sync, model server, gateway) with the variables the Makefile's run recipe sets,
plus a bucket and a short sync interval. The router is nginx from Debian, round-robin, standing
in for Heroku's router: no retries on another dyno, no dyno ever marked down.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

from devtools import nginx
from tests.support import (
    GATEWAY_PYTHON,
    REPO_ROOT,
    VENV_PYTHON,
    ManagedProcess,
    free_port,
    http_ok,
    python_env,
)

ENTRYPOINT = [str(GATEWAY_PYTHON), "-m", "dyno"]  # what `make run` runs


def makefile_run_variables() -> set[str]:
    """Names of the variables the Makefile's `run` recipe sets before `python -m dyno`."""
    text = (REPO_ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*?\n((?:\t.*\n)+)", text, re.M)
    assert recipe is not None, "the Makefile has no run recipe"
    return set(re.findall(r"^\t\s*([A-Z][A-Z0-9_]*)=", recipe.group(1), re.M))


def run_env(work: Path, extra: dict[str, str]) -> dict[str, str]:
    """`make run`'s environment for a dyno working in `work`, plus `extra` (bucket, interval)."""
    env = python_env(
        {
            "PORT": str(free_port()),
            "DYNOSERVE_RUNTIME_PYTHON": str(GATEWAY_PYTHON),
            "DYNOSERVE_MODEL_PYTHON": str(VENV_PYTHON),
            "DYNOSERVE_MODEL_BASE_PATH": str(work / "models"),
            "DYNOSERVE_RUN_DIR": str(work / "run"),
            # Two dynos on one machine: the sidecar ports must differ (on Heroku each has its own).
            "DYNOSERVE_MODEL_SERVER_GRPC_PORT": str(free_port()),
            "DYNOSERVE_MODEL_SERVER_REST_PORT": str(free_port()),
            "DYNOSERVE_BIND_HOST": "127.0.0.1",
            # The loads repeat a few images: they must reach the model, not the answer cache.
            "DYNOSERVE_ANSWER_CACHE_BYTES": "0",
            **extra,
        }
    )
    missing = makefile_run_variables() - set(env)
    assert not missing, f"the Makefile's run recipe sets {sorted(missing)}; so must the test"
    return env


def descendants(root: int) -> list[int]:
    """Every live process below `root` (Linux task children lists)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children = [int(p) for p in task.read_text().split()]
                found += children
                todo += children
    return found


@dataclass
class Dyno:
    """One stack: `python -m dyno` and what it starts."""

    name: str
    work: Path
    env: dict[str, str]
    proc: ManagedProcess | None = None
    _pids: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.env["PORT"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def status_file(self) -> Path:
        return Path(self.env["DYNOSERVE_MODEL_BASE_PATH"]) / "sync-status.json"

    def start(self) -> Dyno:
        self.work.mkdir(parents=True, exist_ok=True)
        self.proc = ManagedProcess(ENTRYPOINT, self.work / "dyno.log", env=self.env).start()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        assert self.proc is not None
        self.proc.wait_ready(lambda: http_ok(self.base + "/readyz"), timeout)

    def log(self) -> str:
        return self.proc.log() if self.proc is not None else ""

    def processes(self) -> dict[int, str]:
        """pid -> role of every process of the dyno alive now."""
        if self.proc is None or not self.proc.alive():
            return {}
        return {pid: role_of(pid) for pid in [self.proc.pid, *descendants(self.proc.pid)]}

    def stop(self) -> None:
        """SIGTERM to the entrypoint (it passes it to supervisord), then SIGKILL what is left."""
        if self.proc is None:
            return
        left = descendants(self.proc.pid) if self.proc.alive() else []
        self.proc.stop(timeout=30)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


ROLE_MARKERS = (
    ("-m\0gateway", "gateway"),
    ("-m\0serving", "model server"),
    ("serving.local", "model server"),
    ("tensorflow_model_server", "model server"),
    ("-m\0sync", "sync"),
    ("supervisord", "supervisord"),
    ("-m\0dyno", "entrypoint"),
)


def role_of(pid: int) -> str:
    try:
        line = Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return "gone"
    return next((role for marker, role in ROLE_MARKERS if marker in line), "other")


_ROUTES = """\
    client_max_body_size 16m;
    upstream dynos {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://dynos;
            # Every answer is one dyno's own: no second try elsewhere.
            proxy_next_upstream off;
            proxy_read_timeout 30s;
            add_header X-Dyno $upstream_addr always;
        }}
    }}"""


class Router:
    """nginx on 127.0.0.1, round-robin over the dynos' ports, its files under `run`."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.port = free_port()
        self.proc: ManagedProcess | None = None

    def _conf(self, ports: list[int]) -> str:
        # max_fails=0: a dyno is never taken out of the rotation, as on Heroku.
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in ports)
        http = _ROUTES.format(servers=servers, port=self.port)
        return nginx.render("round-robin over the dynos, as Heroku's router", self.run, http)

    def start(self, ports: list[int]) -> Router:
        self.proc = nginx.start(self._conf(ports), self.run, self.port)
        return self

    def route(self, ports: list[int]) -> None:
        """Route to these dynos from now on (nginx re-reads its configuration on SIGHUP)."""
        assert self.proc is not None, "the router was never started"
        (self.run / "nginx.conf").write_text(self._conf(ports))
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
