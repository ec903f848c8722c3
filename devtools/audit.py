"""`python -m devtools.audit FILE...` (`make audit`, run by `make lint`): known vulnerabilities
in every pinned requirement, from PyPI's vulnerability data (the PyPA advisory database).

pip-audit (pinned in requirements/dev.txt) asks PyPI's JSON API about each pinned version
(`/pypi/<name>/<version>/json`). The registry these machines reach serves only the project
form (`/pypi/<name>/json`), whose `vulnerabilities` are those of the latest release, so pip-audit
alone reports every pin "not found" and still says "No known vulnerabilities found". For each
pin pip-audit could not audit, this asks the project form: when the pin is the latest release
its answer is exact; otherwise the pin is listed as not audited, never counted as clean.

Exit codes: 0 no known vulnerability among the audited pins; 1 a pinned version has one (or,
with --strict, a pin could not be audited); 2 PyPI could not be asked.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYPI = "https://pypi.org"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")
_INCLUDE = re.compile(r"^-(?:r|-requirement)\s+(\S+)")

Fetch = Callable[[str], Any]


class AuditUnavailable(Exception):
    """PyPI (or pip-audit) could not be asked: nothing can be said about the pins."""


@dataclass
class Report:
    """What is known about the pins after pip-audit and the fallback."""

    vulnerable: dict[str, list[str]] = field(default_factory=dict)
    """`name==version` -> advisory ids (with the versions that fix them)."""
    audited: set[str] = field(default_factory=set)
    unaudited: dict[str, str] = field(default_factory=dict)
    """`name==version` -> why it could not be audited."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(files: Iterable[Path]) -> dict[str, str]:
    """canonical name -> pinned version, from `name==version` lines (following -r includes)."""
    pins: dict[str, str] = {}
    seen: set[Path] = set()
    todo = [Path(f) for f in files]
    while todo:
        path = todo.pop()
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if include := _INCLUDE.match(line):
                todo.append(path.parent / include.group(1))
            elif pin := _PIN.match(line):
                pins[canonical(pin.group(1))] = pin.group(2)
    return pins


def run_pip_audit(files: Sequence[Path]) -> list[dict[str, Any]]:
    """pip-audit's per-dependency results (PyPI service, pins as written, no resolution)."""
    argv = [sys.executable, "-m", "pip_audit", "--vulnerability-service", "pypi", "--no-deps"]
    argv += ["--disable-pip", "--progress-spinner", "off", "--format", "json"]
    for path in files:
        argv += ["-r", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    try:
        return list(json.loads(result.stdout)["dependencies"])
    except (ValueError, KeyError, TypeError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AuditUnavailable(f"pip-audit failed (exit {result.returncode}): {tail}") from None


def fetch_json(url: str) -> Any:
    """GET a PyPI JSON document; None for 404; AuditUnavailable when PyPI cannot be asked."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            return None
        raise AuditUnavailable(f"{url}: HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise AuditUnavailable(f"{url}: {exc}") from exc


def describe(vulns: Iterable[dict[str, Any]]) -> list[str]:
    return [
        f"{v.get('id')} (fixed in {', '.join(v.get('fixed_in') or []) or 'no release yet'})"
        for v in vulns
    ]


def fallback(name: str, version: str, fetch: Fetch, base: str = PYPI) -> list[str] | str:
    """Advisories of `name==version` from the project document, or why there is no answer."""
    document = fetch(f"{base}/pypi/{name}/json")
    if document is None:
        return "not on PyPI"
    latest = str(document.get("info", {}).get("version"))
    if latest != version:
        return f"PyPI here has vulnerability data for the latest release ({latest}) only"
    return describe(document.get("vulnerabilities") or [])


def audit(
    results: list[dict[str, Any]], pins: dict[str, str], fetch: Fetch, base: str = PYPI
) -> Report:
    report = Report()
    skipped = []
    for item in results:
        name = canonical(str(item.get("name")))
        pin = f"{name}=={item.get('version') or pins.get(name, '?')}"
        if "skip_reason" in item:
            skipped.append(name)
        elif item.get("vulns"):
            report.vulnerable[pin] = describe(item["vulns"])
        else:
            report.audited.add(pin)
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda n: fallback(n, pins.get(n, "?"), fetch, base), skipped)
        for name, answer in zip(skipped, answers, strict=True):
            pin = f"{name}=={pins.get(name, '?')}"
            if isinstance(answer, str):
                report.unaudited[pin] = answer
            elif answer:
                report.vulnerable[pin] = answer
            else:
                report.audited.add(pin)
    return report


def print_report(report: Report, strict: bool) -> int:
    total = len(report.audited) + len(report.vulnerable) + len(report.unaudited)
    for pin, advisories in sorted(report.vulnerable.items()):
        print(f"VULNERABLE {pin}: {'; '.join(advisories)}")
    for pin, why in sorted(report.unaudited.items()):
        print(f"not audited {pin}: {why}")
    audited = len(report.audited) + len(report.vulnerable)
    print(
        f"audit: {audited} of {total} pins audited against PyPI's vulnerability data, "
        f"{len(report.vulnerable)} vulnerable, {len(report.unaudited)} not audited"
    )
    if report.vulnerable:
        return 1
    return 1 if strict and report.unaudited else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.audit", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="pinned requirements files")
    parser.add_argument("--strict", action="store_true", help="fail on pins not audited")
    args = parser.parse_args(argv)
    try:
        report = audit(run_pip_audit(args.files), read_pins(args.files), fetch_json)
    except AuditUnavailable as exc:
        print(f"audit: could not ask PyPI, nothing audited: {exc}", file=sys.stderr)
        return 2
    return print_report(report, args.strict)


if __name__ == "__main__":
    sys.exit(main())
