"""`python -m serving.local [TF Serving flags]`: the TF-Serving-compatible local model server."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from envsettings import exit_on_error
from serving import flags
from serving.local.errors import ServingError
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.local.server import ModelServer

log = logging.getLogger("serving.local")
PROGRAM = "python -m serving.local"
VERSION = "dynoserve-local 0.1.0 (TF-Serving-compatible)"


def configure_logging() -> None:
    """One line per event on stderr, in the spirit of TF Serving's glog lines."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d: %(levelname).1s %(name)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def report_flags(options: flags.ServerOptions) -> None:
    """Unknown arguments as TF Serving reports them; ignored flags as warnings."""
    for argument in options.unknown:
        sys.stdout.write(f"unknown argument: {argument}\n{flags.usage(PROGRAM)}")
        sys.stdout.flush()
    for name in options.ignored:
        log.warning("--%s is a TF Serving flag this local server accepts but ignores", name)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    options = flags.parse_or_exit(sys.argv[1:] if argv is None else argv, PROGRAM)
    if options.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: {VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    report_flags(options)
    from serving.local.server import ModelServer

    with exit_on_error(PROGRAM):
        settings = Settings.from_env()
    try:
        server = ModelServer(options, settings)
    except ServingError as exc:
        print(f"Failed to start server. Error: {exc}", flush=True)
        return 255
    return serve(server)


def serve(server: ModelServer) -> int:
    """Run until SIGTERM/SIGINT; 255 when start-up fails, as TF Serving exits."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("Received signal %d, shutting down", signum)
        stop.set()
        server.abort_startup()

    # Under supervisord the launcher makes SIGTERM ignored, as for stock TF Serving, so the
    # server outlives the gateway's drain; it is stopped with SIGINT. Keep that.
    if signal.getsignal(signal.SIGTERM) != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except (ServingError, OSError) as exc:
        if not stop.is_set():
            print(f"Failed to start server. Error: {exc}", flush=True)
            server.stop()
            return 255
    stop.wait()
    server.stop()
    return 0
