"""`python -m dyno`: run supervisord with every program's log on this process's stdout, whoever
owns that stdout, and pass supervisord the signals the container gets.

supervisord opens each program's log by path, and /dev/stdout is /proc/self/fd/1: opening a pipe
that belongs to another user again fails with EACCES for a non-root user, which is what a
container runtime may hand the dyno (then no program starts and Heroku kills the dyno, R10).
So this process makes a FIFO of its own in $DYNOSERVE_RUN_DIR, supervisord.conf sends the logs
there ($DYNOSERVE_LOG_FIFO), and this process copies the FIFO to the stdout it inherited.

Signals: SIGTERM, SIGINT, SIGQUIT, SIGHUP and SIGUSR2 go on to supervisord (`docker stop`
signals only PID 1). This process never dies of them: it copies until end of file, which comes
once supervisord has exited, so the last lines of the shutdown are not lost, and exits with
supervisord's status. As PID 1 it also reaps orphaned processes.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from envsettings import EnvSettings, env

APP_DIR = Path(__file__).resolve().parent.parent
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR2)
FIFO_NAME = "stdout.fifo"
# Variables this entrypoint sets for supervisord.conf (the others come from the image's ENV).
PROVIDES = ("DYNOSERVE_LOG_FIFO",)
_CHUNK = 65536


@dataclass(frozen=True)
class Settings(EnvSettings):
    """Read once from the environment in main()."""

    run_dir: Path = env("DYNOSERVE_RUN_DIR", Path("var/run"))
    """The FIFO and supervisord's pid file; created when missing."""
    config: Path = APP_DIR / "supervisord.conf"
    """supervisord.conf beside this package (the app directory)."""


def make_fifo(path: Path) -> Path:
    """A FIFO at `path` owned by this process's user (a stale one from a killed run is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISFIFO(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o600)
    return path


class Supervisor:
    """supervisord as a child process, and what happened to it."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.status: int | None = None
        self._pending: list[int] = []

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        if self.pid is None:
            self._pending.append(signum)  # arrived before the spawn: deliver right after
        elif self.status is None:
            os.kill(self.pid, signum)

    def spawn(self, config: Path, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(config)]
        # Default SIGPIPE in supervisord and its programs, as subprocess would restore it.
        self.pid = os.posix_spawn(sys.executable, argv, env, setsigdef=(signal.SIGPIPE,))
        for signum in self._pending:
            os.kill(self.pid, signum)

    def reap(self) -> None:
        """Collect every exited child (PID 1 inherits orphans); note supervisord's status."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = _exit_code(wait_status)


def _exit_code(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def copy_until_eof(reader: int, keeper: int, child: Supervisor, out: int = 1) -> int:
    """Copy the FIFO to `out` until supervisord has exited and every writer has closed it.

    `keeper` is a write end this process holds so the FIFO cannot reach end of file before
    supervisord opens it; it is closed once supervisord has exited.
    """
    keeper_open = True
    while True:
        child.reap()
        if keeper_open and child.status is not None:
            os.close(keeper)
            keeper_open = False
        readable, _, _ = select.select([reader], [], [], 0.5)
        if not readable:
            continue
        try:
            chunk = os.read(reader, _CHUNK)
        except BlockingIOError:
            continue
        if not chunk:
            child.reap()
            return child.status if child.status is not None else 0
        _write_all(out, chunk)


def _write_all(out: int, data: bytes) -> None:
    """Write everything; a stdout nobody reads any more is ignored (keep draining the FIFO)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(out, view) :]
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                return
            raise


def main(argv: Sequence[str] | None = None) -> int:
    del argv  # no options: everything comes from the environment, as on Heroku
    settings = Settings.from_env()
    fifo = make_fifo(settings.run_dir / FIFO_NAME)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keeper = os.open(fifo, os.O_WRONLY)
    child = Supervisor()
    for signum in FORWARDED:
        signal.signal(signum, child.forward)
    env = {**os.environ, "DYNOSERVE_LOG_FIFO": str(fifo)}
    try:
        child.spawn(settings.config, env)
        return copy_until_eof(reader, keeper, child)
    finally:
        os.close(reader)
        fifo.unlink(missing_ok=True)
