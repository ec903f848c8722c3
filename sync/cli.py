"""`python -m sync`: boot sync, then watch; exit codes and log lines made for supervisord.

Exit codes: 0 done (`--once`) or stopped by SIGTERM; 2 bad arguments; 69 source unreachable
with no local copy; 75 another sync holds the repository; 77 credentials refused;
78 configuration error (bad setting, no such bucket). Without `--once` a failed boot pass is
retried with exponential backoff (capped) instead of exiting 69 / 77 / 78.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from envsettings import SettingsError
from sync.errors import EX_USAGE, AlreadyRunning, SyncError
from sync.local import LocalSource
from sync.s3 import S3Source
from sync.settings import Settings
from sync.source import Source
from sync.syncer import Syncer

log = logging.getLogger("sync")

# Watch mode retries a failed boot pass after 1, 2, 4 ... seconds, at most this far apart.
BOOT_RETRY_FIRST_S = 1.0
BOOT_RETRY_MAX_S = 30.0


def build_source(settings: Settings) -> Source:
    """The bucket when one is configured, else the local export folder."""
    if settings.s3 is not None:
        return S3Source(settings.s3)
    return LocalSource(settings.export_dir)


def configure_logging(verbose: bool = False) -> None:
    # One line per event on stderr: supervisord stamps and rotates it.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s sync %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("s3transfer").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def start_tool(
    parse: Callable[[Sequence[str] | None], argparse.Namespace], argv: Sequence[str] | None
) -> argparse.Namespace | int:
    """The start of the one-shot tools (publish, labels): their arguments with logging set
    up, or the exit status when argparse has answered already (usage error 64, --help 0)."""
    try:
        args = parse(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else 0
    configure_logging()
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sync",
        description="Sync models from S3 (or the export folder) into the model repository.",
        epilog="Exit codes: 0 ok, 69 source unreachable (no local copy), 75 another sync runs, "
        "77 credentials refused, 78 configuration. Settings and rules: docs/sync.md.",
    )
    parser.add_argument("--once", action="store_true", help="boot sync only, then exit")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="one pass that also drops models gone from the source (from models.config and "
        "disk), then exit; run it with the dyno stopped (make prune)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = Settings.from_env(os.environ)
        source = build_source(settings)
    except (SyncError, SettingsError) as exc:
        log.error("configuration error: %s", exc)
        return exc.exit_code
    log.info("syncing %s -> %s", settings.describe_source(), settings.model_base_path)
    syncer = Syncer(settings, source)
    syncer.prune_confirmed = args.prune
    try:
        return _run(syncer, once=args.once or args.prune)
    finally:
        source.close()


def _run(syncer: Syncer, once: bool) -> int:
    try:
        with syncer.repository.exclusive():
            return _boot_and_watch(syncer, once)
    except SyncError as exc:
        log.error("%s", exc)
        if isinstance(exc, AlreadyRunning) and syncer.prune_confirmed:
            log.error("stop `make run` (or the dyno) first; DYNOSERVE_SYNC_PRUNE=true prunes live")
        return exc.exit_code


def _boot_and_watch(syncer: Syncer, once: bool) -> int:
    stop = threading.Event()
    # Handlers first: a SIGTERM during the boot pass lets the install in progress finish
    # (Heroku signals every process at once; supervisord allows stopwaitsecs).
    _stop_on_signals(stop)
    delay = BOOT_RETRY_FIRST_S
    while True:
        try:
            syncer.boot()
            break
        except SyncError as exc:
            log.error("boot sync failed and there is no local copy to serve: %s", exc)
            if once:
                return exc.exit_code
        # Under supervisord: back off here rather than exit into a tight restart loop; the
        # status file (and so the gateway's /readyz) names the cause meanwhile.
        log.info("retrying the boot sync in %gs", delay)
        if stop.wait(delay):
            return 0
        delay = min(delay * 2, BOOT_RETRY_MAX_S)
    if once or stop.is_set():
        return 0
    syncer.watch(stop)
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current pass", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
