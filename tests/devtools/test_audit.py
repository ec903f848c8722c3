"""The dependency audit's own logic against a fake PyPI JSON API on loopback (the real one is
asked by `make audit`; tests reach no further than loopback)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devtools.audit import AuditUnavailable, audit, fetch_json, print_report, read_pins
from tests.support import free_port

ADVISORY = {"id": "PYSEC-2099-1", "fixed_in": ["2.0.1"], "aliases": ["CVE-2099-1"]}
PROJECTS = {
    # name: (latest release, vulnerabilities of the latest release)
    "fresh": ("1.0.0", []),
    "stale": ("3.0.0", []),
    "unlucky": ("2.0.0", [ADVISORY]),
}


def _handler() -> type[BaseHTTPRequestHandler]:
    class FakePyPI(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            project = PROJECTS.get(parts[1]) if len(parts) == 3 and parts[0] == "pypi" else None
            if project is None:  # as here: no per-version documents, unknown projects
                self.send_error(404)
                return
            body = json.dumps({"info": {"version": project[0]}, "vulnerabilities": project[1]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return FakePyPI


@pytest.fixture
def fake_pypi() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def skipped(name: str, version: str) -> dict[str, str]:
    """pip-audit's JSON for a pin whose per-version document PyPI does not serve here."""
    return {"name": name, "skip_reason": f"Dependency not found on PyPI: {name} ({version})"}


def test_pins_are_read_through_includes(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("Fresh_Pkg==1.0.0  # comment\nmoto[server]==5.2.5\n")
    (tmp_path / "dev.txt").write_text("-r base.txt\nstale==2.0\n-e .\nunpinned>=1\n")
    assert read_pins([tmp_path / "dev.txt"]) == {
        "fresh-pkg": "1.0.0",
        "moto": "5.2.5",
        "stale": "2.0",
    }


def test_skipped_pins_are_audited_when_they_are_the_latest_release(fake_pypi: str) -> None:
    pins = {"fresh": "1.0.0", "stale": "2.0", "unlucky": "2.0.0", "private": "0.1", "ok": "1"}
    results: list[dict[str, Any]] = [skipped(n, v) for n, v in pins.items() if n != "ok"]
    results.append({"name": "ok", "version": "1", "vulns": []})  # pip-audit's exact answer
    report = audit(results, pins, fetch_json, base=fake_pypi)
    assert report.audited == {"fresh==1.0.0", "ok==1"}
    assert report.vulnerable == {"unlucky==2.0.0": ["PYSEC-2099-1 (fixed in 2.0.1)"]}
    assert set(report.unaudited) == {"stale==2.0", "private==0.1"}
    assert "latest release (3.0.0) only" in report.unaudited["stale==2.0"]


def test_exit_codes(fake_pypi: str, capsys: pytest.CaptureFixture[str]) -> None:
    clean = audit([skipped("fresh", "1.0.0")], {"fresh": "1.0.0"}, fetch_json, fake_pypi)
    assert print_report(clean, strict=True) == 0
    stale = audit([skipped("stale", "2.0")], {"stale": "2.0"}, fetch_json, fake_pypi)
    assert print_report(stale, strict=False) == 0
    assert print_report(stale, strict=True) == 1
    bad = audit([skipped("unlucky", "2.0.0")], {"unlucky": "2.0.0"}, fetch_json, fake_pypi)
    assert print_report(bad, strict=False) == 1
    out = capsys.readouterr().out
    assert "VULNERABLE unlucky==2.0.0: PYSEC-2099-1 (fixed in 2.0.1)" in out
    assert "1 of 1 pins audited" in out


def test_unreachable_pypi_is_not_a_pass() -> None:
    with pytest.raises(AuditUnavailable):
        audit(
            [skipped("fresh", "1.0.0")],
            {"fresh": "1.0.0"},
            fetch_json,
            f"http://127.0.0.1:{free_port()}",
        )
