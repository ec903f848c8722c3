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

_LINE = re.compile(r"^HTTP/\d\.\d (\d{3})\s+([\d.]+) secs:")
_SUMMARY = re.compile(r"^([A-Za-z ]+):\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERROR = re.compile(r"^\[error\]", re.MULTILINE)


@dataclass
class SiegeResult:
    """One siege run: per-request statuses and latencies, and siege's own summary."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)

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
    """siege -c `clients` for `seconds` over the URL file; the raw output is kept in workdir."""
    rc = workdir / "siegerc"
    rc.write_text(SIEGERC)
    argv = ["siege", "-R", str(rc), "-f", str(urls), f"-c{clients}", f"-t{max(1, round(seconds))}S"]
    argv += ["--content-type", "application/json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
    (workdir / f"siege-c{clients}.out").write_text(done.stdout[-200_000:] + done.stderr)
    if "Transactions:" not in done.stderr:
        raise RuntimeError(
            f"siege printed no report (exit {done.returncode}): {done.stderr[-2000:]}"
        )
    return parse(done.stdout, done.stderr)
