"""The dyno as the image runs it, on this machine: `python -m dyno` as a non-root uid whose
stdout is a pipe owned by another user, with the Dockerfile's ENV (paths mapped onto the
repository and a scratch folder), a random $PORT, models from S3 (moto)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import GATEWAY_PYTHON, REPO_ROOT, free_port, http_ok, port_open, wait_for

DYNO_MODULE = "dyno"  # the image's CMD is `<runtime python> -m dyno` (tests/e2e/test_packaging)
DYNO_UID = 10001  # the Dockerfile's USER; Heroku's may differ and need not be in /etc/passwd
# Where the image's paths live here: the app dir is the (read-only) repository.
IMAGE_PATHS = {"/app": str(REPO_ROOT), "/opt/venv/bin/python": str(GATEWAY_PYTHON)}


def dockerfile_env() -> dict[str, str]:
    """The ENV instructions of the Dockerfile, as the image has them."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", text, re.M | re.S):
        for item in shlex.split(block.replace("\\\n", " ")):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def can_switch_user() -> bool:
    return os.geteuid() == 0


@dataclass
class Layout:
    """The dyno's writable places in a scratch folder the dyno's uid can reach."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def run_dir(self) -> Path:
        return self.root / "tmp" / "dynoserve"  # not created: the entrypoint must make it

    @classmethod
    def create(cls, root: Path) -> Layout:
        root.chmod(0o755)
        for folder in (root / "models", root / "tmp"):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o1777)  # as the Dockerfile's chmod 1777
        return cls(root)


def image_env(layout: Layout, extra: dict[str, str]) -> dict[str, str]:
    """The Dockerfile's ENV with its paths mapped here, plus what Heroku and the test set."""
    env = {}
    for name, value in dockerfile_env().items():
        for image_path, local in IMAGE_PATHS.items():
            value = value.replace(image_path, local) if value.startswith(image_path) else value
        env[name] = value
    env["DYNOSERVE_MODEL_BASE_PATH"] = str(layout.models)
    env["DYNOSERVE_RUN_DIR"] = str(layout.run_dir)
    # Loopback ports of the sidecar: free ones, as other tests may hold 8500/8501.
    env["DYNOSERVE_MODEL_SERVER_GRPC_PORT"] = str(free_port())
    env["DYNOSERVE_MODEL_SERVER_REST_PORT"] = str(free_port())
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=str(REPO_ROOT),  # Heroku's HOME is the (read-only here) app dir
        PORT=str(free_port()),
        DYNOSERVE_BIND_HOST="127.0.0.1",  # tests bind loopback only
        TF_CPP_MIN_LOG_LEVEL="2",
        # The loads repeat a few images: they must reach the model, not the answer cache.
        DYNOSERVE_ANSWER_CACHE_BYTES="0",
    )
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ:  # the local stand-in is TensorFlow: test both kernels
        env["TF_ENABLE_ONEDNN_OPTS"] = os.environ["TF_ENABLE_ONEDNN_OPTS"]
    env.update(extra)
    return env


class Dyno:
    """One `python -m dyno` process tree; its stdout+stderr is a pipe this (other) user owns."""

    def __init__(self, env: dict[str, str], uid: int | None = DYNO_UID) -> None:
        self.env = env
        self.uid = uid
        self.port = int(env["PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    def start(self) -> Dyno:
        read_end, write_end = os.pipe()  # owned by this process's user, mode 0600
        argv = [self.env["DYNOSERVE_RUNTIME_PYTHON"], "-m", DYNO_MODULE]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            as_user(argv, self.uid, Path(self.env["DYNOSERVE_RUN_DIR"]).parent),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            env=self.env,
            cwd="/",
            start_new_session=True,
        )
        os.close(write_end)
        self._reader = threading.Thread(target=self._read, args=(read_end,), daemon=True)
        self._reader.start()
        return self

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                self._lines.append(line.decode(errors="replace"))

    def log(self) -> str:
        return "".join(self._lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_port(self, timeout: float) -> float:
        """Seconds from start until $PORT accepts connections."""
        wait_for(lambda: self._check_alive() and port_open(self.port), timeout, 0.02, "$PORT")
        return time.monotonic() - self.started_at

    def wait_ready(self, timeout: float = 120) -> float:
        try:
            wait_for(lambda: self._check_alive() and http_ok(self.base + "/readyz"), timeout, 0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- dyno log ---\n{self.log()[-5000:]}") from exc
        return time.monotonic() - self.started_at

    def _check_alive(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"the dyno exited early:\n{self.log()[-5000:]}")
        return True

    def processes(self) -> dict[str, int]:
        """Role -> pid of the entrypoint, supervisord and the three programs (the live ones)."""
        assert self.proc is not None
        roles = {"entrypoint": self.proc.pid}
        for pid in descendants(self.proc.pid):
            cmdline = _cmdline(pid)
            for role, marker in ROLE_MARKERS.items():
                if marker in cmdline:
                    roles[role] = pid
        return roles

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Whatever state it is in: SIGTERM, then SIGKILL to everything left."""
        if self.proc is None:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            _kill(pid, signal.SIGKILL)
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
    """`argv` run as `uid` (no supplementary groups) via setpriv.

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


ROLE_MARKERS = {
    "supervisord": "supervisor.supervisord",
    "sync": "-m\0sync",
    "model_server": "serving",
    "gateway": "-m\0gateway",
}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every live process below `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def signal_all(pids: list[int], signum: int) -> None:
    """Heroku's way: the signal to every process of the dyno at once."""
    for pid in pids:
        _kill(pid, signum)


class TcpSwitch:
    """A loopback TCP forwarder standing between the dyno and S3: down means nothing listens
    on its port (connection refused, as for an unreachable endpoint); up forwards to moto."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def down(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        """Bytes both ways until either side closes; both sockets closed at the end."""
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            peers = {client: upstream, upstream: client}
            with contextlib.suppress(OSError):
                while True:
                    readable, _, _ = select.select(list(peers), [], [], 30)
                    if not readable:
                        return
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            return
                        peers[sock].sendall(data)


def iter_lines(text: str, needle: str) -> Iterator[str]:
    return (line for line in text.splitlines() if needle in line)
