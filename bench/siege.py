"""siege as the original experiment ran it: N clients posting `{"image_url": ...}` back to back.

Per-request status and time come from siege's verbose lines (one per request, on stdout, time
in 10 ms steps); its summary (transactions, rate, elapsed time) from its stderr report. siege's
own "failed transactions" counts only socket errors: HTTP errors are counted here by status.
Counts come from the lines; siege's own total can be a few higher (clients cancelled at the
deadline are counted without a line). Rates use siege's elapsed time, as its report does.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Written for each run so the user's ~/.siege/siege.conf cannot change what is measured.
SIEGERC = """\
verbose = true
color = off
quiet = false
json_output = false
show-logfile = false
logging = false
parser = false
protocol = HTTP/1.1
chunked = true
cache = false
connection = close
benchmark = true
delay = 0.0
internet = false
timeout = 60
limit = 255
failures = 1000000
"""

# siege's own per-request timeout is 60 s (SIEGERC); a run still going this long after its -t
# limit is hung, not waiting on an answer.
HANG_GRACE_S = 75

_LINE = re.compile(r"^HTTP/\d\.\d (\d{3})\s+([\d.]+) secs:")
_SUMMARY = re.compile(r"^([A-Za-z ]+):\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERROR = re.compile(r"^\[error\]", re.MULTILINE)


@dataclass
class SiegeResult:
    """One siege run: per-request statuses and latencies, and siege's own summary."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    hung: bool = False  # siege never stopped; counts are from its lines, elapsed is the -t

    @property
    def elapsed_s(self) -> float:
        return self.summary.get("elapsed_time", 0.0)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def failures(self) -> dict[str, int]:
        return {status: n for status, n in sorted(self.statuses.items()) if status != "200"}


def parse(stdout: str, stderr: str) -> SiegeResult:
    """Parse siege's verbose lines and its report (both as siege 4.0.7 prints them)."""
    result = SiegeResult()
    for line in stdout.splitlines():
        match = _LINE.match(line)
        if match:
            result.statuses[match.group(1)] += 1
            result.latencies_s.append(float(match.group(2)))
    socket_errors = len(_SOCKET_ERROR.findall(stderr))
    if socket_errors:
        result.statuses["socket error"] = socket_errors
    for name, value in _SUMMARY.findall(stderr):
        result.summary[name.strip().lower().replace(" ", "_")] = float(value)
    return result


def url_file(path: Path, endpoint: str, image_urls: Sequence[str]) -> Path:
    """siege's URL file: one `URL POST <json>` line per image (each client walks the list)."""
    lines = [f"{endpoint} POST {json.dumps({'image_url': url})}" for url in image_urls]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(urls: Path, clients: int, seconds: float, workdir: Path) -> SiegeResult:
    """siege -c `clients` for `seconds` over the URL file; the raw output is kept in workdir.

    siege 4.0.7 (Debian's) sometimes never finishes "Lifting the server siege..." with many
    clients (JoeDog/siege#66, fixed in 4.1.4): past its per-request timeout it is killed and
    the step counts what its per-request lines say, over the seconds asked for, marked hung.
    It also, rarely, lifts the siege as soon as it began (0 hits in 0.02 s of a 1 s run, seen
    once in CI with 2 clients): such a run measured nothing and is run again, once.
    """
    result = _run_once(urls, clients, seconds, workdir)
    if ended_at_once(result, seconds):
        result = _run_once(urls, clients, seconds, workdir)
    return result


def ended_at_once(result: SiegeResult, seconds: float) -> bool:
    """siege reported no transaction and stopped before a tenth of the time it was given."""
    return not result.hung and not result.latencies_s and result.elapsed_s < 0.1 * seconds


def _run_once(urls: Path, clients: int, seconds: float, workdir: Path) -> SiegeResult:
    rc = workdir / "siegerc"
    rc.write_text(SIEGERC)
    limit = max(1, round(seconds))
    argv = ["siege", "-R", str(rc), "-f", str(urls), f"-c{clients}", f"-t{limit}S"]
    argv += ["--content-type", "application/json"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=limit + HANG_GRACE_S, check=False
        )
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as hung:
        stdout, stderr, code = _text(hung.stdout), _text(hung.stderr), None
    (workdir / f"siege-c{clients}.out").write_text(stdout[-200_000:] + stderr)
    if code is None:
        result = parse(stdout, "")
        result.summary["elapsed_time"], result.hung = float(limit), True
        return result
    if "Transactions:" not in stderr:
        raise RuntimeError(f"siege printed no report (exit {code}): {stderr[-2000:]}")
    return parse(stdout, stderr)


def _text(output: str | bytes | None) -> str:
    """What a killed run had printed (bytes on POSIX even in text mode)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
