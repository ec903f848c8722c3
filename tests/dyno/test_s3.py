"""S3 unreachable at boot: without a local copy sync backs off (no restart loop) and /readyz says
why, then heals when S3 is back; with a copy from an earlier boot the dyno serves it and says so."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from devtools.dynostack import Dyno
from tests.dyno.conftest import RESULTS
from tests.dyno.stack import Layout, TcpSwitch
from tests.support import http_json, wait_for

pytestmark = pytest.mark.slow

WATCH_S = 8.0  # attempts at 0, 1, 3 and 7 s with the backoff; a restart loop makes dozens


def test_s3_down_at_boot_without_then_with_a_local_copy(
    make_dyno: Callable[..., Dyno], make_layout: Callable[[], Layout], s3_switch: TcpSwitch
) -> None:
    layout = make_layout()
    s3_switch.down()
    try:
        dyno = make_dyno(layout)
        assert dyno.wait_port(timeout=30) < 5.0
        body = _not_ready_with_a_reason(dyno)
        assert "sync has not completed its boot pass" in body["reason"]
        assert "reach" in body["sync"]["last_error"], body
        time.sleep(max(0.0, WATCH_S - (time.monotonic() - dyno.started_at)))
        attempts = dyno.log().count("boot sync failed")
        assert 2 <= attempts <= 5, dyno.log()[-3000:]
        assert dyno.log().count(" sync INFO syncing s3://") == 1, "sync was restarted"
        back_at = time.monotonic()
        s3_switch.up()
        dyno.wait_ready(timeout=120)
        healed_s = time.monotonic() - back_at
        RESULTS.append(
            {
                "fault": "S3 down at boot, no copy",
                "attempts_in_8s": attempts,
                "recovery_s": round(healed_s, 1),
            }
        )
        dyno.stop()

        s3_switch.down()
        cached = make_dyno(layout)
        ready_s = cached.wait_ready(timeout=120)
        status, _, body = http_json(cached.base + "/readyz")
        RESULTS.append({"fault": "S3 down at boot, cached copy", "ready_s": round(ready_s, 1)})
        assert status == 200, body
        assert "local copy" in body["sync"]["degraded"], body
        assert "SERVING THE LOCAL COPY" in cached.log()
    finally:
        s3_switch.up()


def _not_ready_with_a_reason(dyno: Dyno) -> dict:
    answers: list[tuple[int, dict, dict]] = []

    def explained() -> bool:
        status, headers, body = http_json(dyno.base + "/readyz")
        answers.append((status, dict(headers), body))
        return bool(body.get("sync")) and bool(body["sync"].get("last_error"))

    wait_for(explained, timeout=30, interval=0.2, what="/readyz to name the cause")
    status, headers, body = answers[-1]
    assert status == 503, body
    assert headers.get("Retry-After")
    return body
