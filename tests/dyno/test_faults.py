"""Faults under load: a corrupt version published while version 2 serves (zero failed requests,
the failure reported in /v1/models, the status file and /metrics), and 2x overload (nothing but
503 + Retry-After refusals from admission control, and the gateway stays healthy)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.dynostack import Dyno
from devtools.load import Load
from gateway.settings import Settings as GatewaySettings
from sync.marker import build_marker
from tests.dyno.conftest import DEMO_EXPORTS, RESULTS, new_demo_bucket, s3_client
from tests.dyno.stack import Layout
from tests.support import http_json, http_ok, wait_for
from tests.sync.helpers import upload_as_is

pytestmark = pytest.mark.slow

REPORT_WITHIN_S = 25.0
# Overload: admission's budget is cut so that twice what the stack answers within it is a few
# dozen closed-loop clients (the demo model answers hundreds a second).
BUDGET_S = 0.1
OVERLOAD_S = 8.0


def test_corrupt_version_is_reported_and_version_2_keeps_serving(
    make_dyno: Callable[..., Dyno], make_layout: Callable[[], Layout], moto_endpoint: str
) -> None:
    bucket = new_demo_bucket(moto_endpoint)
    layout = make_layout()
    dyno = make_dyno(layout, DYNOSERVE_SYNC_INTERVAL="2", **bucket)
    dyno.wait_ready()
    load = Load(dyno.port, clients=3).start()
    try:
        wait_for(lambda: load.counts()["ok"] >= 20, timeout=30, what="load to warm up")
        published_at = time.monotonic()
        publish_garbage_graph(moto_endpoint, bucket["BUCKETEER_BUCKET_NAME"], layout.root)
        wait_for(
            lambda: reported(dyno, layout.models / "sync-status.json"),
            timeout=REPORT_WITHIN_S,
            interval=0.5,
            what="version 3 reported in /v1/models, the status file and /metrics",
        )
        report_s = time.monotonic() - published_at
        time.sleep(2.0)  # load on version 2 after the failure too (a bounded window, no poll)
    finally:
        load.stop()
    counts = load.counts()
    row = {"fault": "corrupt version 3 published", **counts, "report_s": round(report_s, 1)}
    RESULTS.append(row)
    assert counts["failed"] == counts["lost"] == 0, load.problems()[:5]
    assert counts["ok"] > 20
    status, _, body = http_json(dyno.base + "/v1/models/shapes")
    assert status == 200
    versions = {v["version"]: v for v in body["versions"]}
    assert versions[2]["state"] == "AVAILABLE", body
    assert "shapes/3: the model server failed to load it" in dyno.log()  # logged too


def publish_garbage_graph(endpoint: str, bucket: str, scratch: Path) -> None:
    """Version 3: version 2's files with a garbage saved_model.pb, behind a valid marker."""
    broken = scratch / "broken-3"
    shutil.copytree(DEMO_EXPORTS / "shapes" / "2", broken)
    (broken / "saved_model.pb").write_bytes(b"\x08not a SavedModel" * 64)
    client = s3_client(endpoint)
    try:
        upload_as_is(client, bucket, "models/shapes/3/", build_marker("shapes", 3, broken), broken)
    finally:
        client.close()


def reported(dyno: Dyno, status_file: Path) -> bool:
    _, _, body = http_json(dyno.base + "/v1/models/shapes")
    shown = {v["version"]: v for v in body.get("versions", [])}
    if shown.get(3, {}).get("state") != "END" or not shown[3].get("error"):
        return False
    failed = json.loads(status_file.read_text())["models"]["shapes"]["failed_versions"]
    if "3" not in failed:
        return False
    with urllib.request.urlopen(dyno.base + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    return 'dynoserve_sync_version_failed{model="shapes",version="3"} 1.0' in metrics


def test_twice_the_load_it_serves_is_refused_with_503_not_failed(
    make_dyno: Callable[..., Dyno], make_layout: Callable[[], Layout]
) -> None:
    dyno = make_dyno(make_layout(), DYNOSERVE_ADMISSION_BUDGET_S=str(BUDGET_S))
    dyno.wait_ready()
    probe = Load(dyno.port, clients=16).start()  # enough to keep the stack busy
    try:
        wait_for(lambda: probe.counts()["ok"] >= 50, timeout=30, what="load to warm up")
        began = time.monotonic()
        time.sleep(3.0)  # a measuring window
        rate = probe.counts(after=began)["ok"] / (time.monotonic() - began)
    finally:
        probe.stop()
    # Closed-loop clients: twice what the stack holds within one budget, the requests in
    # prediction (admission's capacity) plus those it answers within the budget. Fewer than the
    # capacity never wait in admission's queue, so nothing is refused (seen: 31 clients, 0 shed).
    capacity = GatewaySettings().max_in_flight
    clients = max(8, min(128, round(2 * (capacity + rate * BUDGET_S))))
    load = Load(dyno.port, clients=clients).start()
    healthy = []
    try:
        until = time.monotonic() + OVERLOAD_S
        while time.monotonic() < until:
            healthy.append(http_ok(dyno.base + "/healthz"))
            time.sleep(0.5)
    finally:
        load.stop()
    counts = load.counts()
    RESULTS.append(
        {"fault": "2x overload", "clients": clients, "rate_per_s": round(rate), **counts}
    )
    assert counts["failed"] == counts["lost"] == 0, load.problems()[:5]
    assert counts["ok"] > 0
    assert counts["shed"] > 0, counts  # really overloaded: admission refused some
    assert all(healthy), healthy
    assert dyno.wait_ready(timeout=10)
