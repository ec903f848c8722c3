"""A dyno on this machine and a router in front of dynos: the one stack the dyno tests, the
scale-out tests and the bench start.

A dyno is the whole stack as `make run` starts it: `python -m dyno` (supervisord with
supervisord.conf: sync, model server, gateway) with the variables the Makefile's run recipe sets
(`run_env`), plus what a test or a measurement adds; its output goes to a log file, or to a
pipe this process reads when it runs as another uid on a pipe it does not own, as the image runs
on Heroku (tests/dyno). The router is nginx from Debian, round-robin, standing in for
Heroku's router: no retries on another dyno, no dyno ever marked down.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from devtools import nginx
from devtools.net import free_port, http_ok, port_open
from devtools.processes import (
    GATEWAY_PYTHON,
    REPO_ROOT,
    VENV_PYTHON,
    ManagedProcess,
    python_env,
    wait_for,
)

DYNO_MODULE = "dyno"  # the image's CMD is `<runtime python> -m dyno` (tests/e2e/test_packaging)
ENTRYPOINT = [str(GATEWAY_PYTHON), "-m", DYNO_MODULE]  # what `make run` runs


def makefile_run_variables(root: Path = REPO_ROOT) -> set[str]:
    """Names of the variables the Makefile's `run` recipe sets before `python -m dyno`."""
    text = (root / "Makefile").read_text()
    recipe = re.search(r"^run:.*?\n((?:\t.*\n)+)", text, re.M)
    assert recipe is not None, "the Makefile has no run recipe"
    return set(re.findall(r"^\t\s*([A-Z][A-Z0-9_]*)=", recipe.group(1), re.M))


def run_env(work: Path, extra: dict[str, str], root: Path = REPO_ROOT) -> dict[str, str]:
    """`make run`'s environment for a dyno working in `work`, plus `extra` (bucket, interval);
    `root`: the checkout whose code and virtualenvs it runs (another one for bench/ab.py)."""
    env = python_env(
        {
            "PYTHONPATH": str(root),
            "PORT": str(free_port()),
            "DYNOSERVE_RUNTIME_PYTHON": str(root / GATEWAY_PYTHON.relative_to(REPO_ROOT)),
            "DYNOSERVE_MODEL_PYTHON": str(root / VENV_PYTHON.relative_to(REPO_ROOT)),
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
    missing = makefile_run_variables(root) - set(env)
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


def kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


class Dyno:
    """One `python -m dyno` process tree, stopped with everything it started. `work`: the folder
    of its log file (else its output is a pipe this process reads); `uid`: run it as that user
    (setpriv, see `as_user`); `cwd`: where it starts (`make run`'s is the repository)."""

    def __init__(
        self,
        env: dict[str, str],
        name: str = "web.1",
        work: Path | None = None,
        uid: int | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.env = env
        self.name = name
        self.work = work
        self.uid = uid
        self.cwd = cwd
        self.port = int(env["PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    @property
    def status_file(self) -> Path:
        return Path(self.env["DYNOSERVE_MODEL_BASE_PATH"]) / "sync-status.json"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def log_path(self) -> Path | None:
        return self.work / "dyno.log" if self.work is not None else None

    def start(self) -> Dyno:
        """Its output goes to `<work>/dyno.log`, or without `work` to a pipe this process owns
        (mode 0600, unwritable to another uid but through the inherited descriptor) and reads."""
        argv = [self.env["DYNOSERVE_RUNTIME_PYTHON"], "-m", DYNO_MODULE]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            read_end, write_end = (
                None,
                os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
            )
        else:
            read_end, write_end = os.pipe()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            as_user(argv, self.uid, Path(self.env["DYNOSERVE_RUN_DIR"]).parent),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        os.close(write_end)
        if read_end is not None:
            self._reader = threading.Thread(target=self._read, args=(read_end,), daemon=True)
            self._reader.start()
        return self

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                self._lines.append(line.decode(errors="replace"))

    def log(self) -> str:
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "".join(self._lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_port(self, timeout: float) -> float:
        """Seconds from start until $PORT accepts connections."""
        wait_for(lambda: self._check_alive() and port_open(self.port), timeout, 0.02, "$PORT")
        return time.monotonic() - self.started_at

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds from start until /readyz answers 200; the log's tail in the error if not."""
        try:
            wait_for(lambda: self._check_alive() and http_ok(self.base + "/readyz"), timeout, 0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- dyno log ---\n{self.log()[-5000:]}") from exc
        return time.monotonic() - self.started_at

    def _check_alive(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"the dyno exited early:\n{self.log()[-5000:]}")
        return True

    def processes(self) -> dict[int, str]:
        """pid -> role of every process of the dyno alive now."""
        if self.proc is None or not self.alive():
            return {}
        return {pid: role_of(pid) for pid in [self.proc.pid, *descendants(self.proc.pid)]}

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Whatever state it is in: SIGTERM to the entrypoint (it passes it to supervisord),
        then SIGKILL to everything left."""
        if self.proc is None:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)

    def __enter__(self) -> Dyno:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_ancestor(path: Path) -> Path | None:
    """The first folder on `path` that other users may not traverse (e.g. /root), or None."""
    for folder in reversed(path.parents):
        if folder != Path("/") and not folder.stat().st_mode & 0o001:
            return folder
    return None


def as_user(argv: list[str], uid: int | None, scratch: Path) -> list[str]:
    """`argv` run as `uid` (no supplementary groups) via setpriv; `argv` itself for None.

    When this machine's interpreter lives in a folder closed to other users (pyenv under
    /root here; /usr/local/bin/python in the image), the dyno runs in a private mount
    namespace where that folder is a 0755 tmpfs holding only the interpreter's tree: a fact of
    this machine, not of the image, hidden from the dyno's processes alone.
    """
    if uid is None:
        return argv
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
    interpreter = Path(os.path.realpath(argv[0]))
    closed = closed_ancestor(interpreter)
    if closed is None:
        return drop
    keep = closed / interpreter.relative_to(closed).parts[0]
    stage = scratch / "interpreter"
    script = (
        f"mkdir -p {stage} && mount --bind {keep} {stage} && "
        f"mount -t tmpfs -o mode=0755,size=1m tmpfs {closed} && "
        f"mkdir {keep} && mount --bind {stage} {keep} && exec {shlex.join(drop)}"
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script]


# Process roles by command line (arguments joined by NUL), first match wins: the dyno's
# processes here, the bench's CPU and memory accounting (bench.procstat, arguments joined by
# spaces: `ROLES`).
ROLE_MARKERS = (
    ("-m\0gateway", "gateway"),
    ("-m\0serving", "model server"),
    ("serving.local", "model server"),
    ("tensorflow_model_server", "model server"),
    ("-m\0sync", "sync"),
    ("supervisord", "supervisord"),
    ("-m\0dyno", "entrypoint"),
)
ROLES = tuple((marker.replace("\0", " "), role) for marker, role in ROLE_MARKERS)


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
