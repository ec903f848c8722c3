"""The dyno as the image runs it, on this machine: `python -m dyno` (devtools.dynostack's
`Dyno`) as a non-root uid whose stdout is a pipe owned by another user, with the Dockerfile's ENV
(paths mapped onto the repository and a scratch folder), a random $PORT, models from S3 (moto)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.dynostack import Dyno, kill
from tests.support import GATEWAY_PYTHON, REPO_ROOT, free_port

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


def image_dyno(env: dict[str, str]) -> Dyno:
    """The dyno as the image runs it: as DYNO_UID, from /, its stdout a pipe this user owns."""
    return Dyno(env, uid=DYNO_UID, cwd=Path("/"))


PROGRAMS = ("entrypoint", "supervisord", "sync", "model server", "gateway")


def programs(dyno: Dyno) -> dict[str, int]:
    """Role -> pid of the entrypoint, supervisord and the three programs (the live ones), named
    as this folder's reports name them (model_server)."""
    roles = {"entrypoint": dyno.pid}
    for pid, role in dyno.processes().items():
        if role in PROGRAMS and pid != dyno.pid:
            roles[role.replace(" ", "_")] = pid
    return roles


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def signal_all(pids: list[int], signum: int) -> None:
    """Heroku's way: the signal to every process of the dyno at once."""
    for pid in pids:
        kill(pid, signum)


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
