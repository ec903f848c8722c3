"""Heroku's shutdown inside the container: SIGTERM to every process of the container at once
(PID 1 included) under load, from clients that reconnect for every request (as Heroku's router
does) and clients that keep their connections (as a proxy with upstream keep-alive does).
Every accepted request is answered, and every process is gone within Heroku's 30 s."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.load import BODY, Load, url_body
from tests.dyno.stack import signal_all
from tests.dyno.test_shutdown import slow_image
from tests.image.conftest import RESULTS, TEST_TIMEOUT_S
from tests.image.container import Container
from tests.image.sizes import memory_for
from tests.imagehost import ImageServer
from tests.support import REPO_ROOT, wait_for

# A cold `make image` (the first test's setup) downloads and installs TensorFlow: ~10 min here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TEST_TIMEOUT_S)]

HEROKU_KILL_AFTER_S = 30.0


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_sigterm_to_every_process_under_load_loses_nothing(
    run_dyno: Callable[..., Container], image: str, image_server: ImageServer
) -> None:
    dyno = run_dyno(
        memory_for(image, "demo"),
        {"DYNOSERVE_FETCH_ALLOW_PRIVATE": "true"},
        exports=REPO_ROOT / "exports",
    )
    dyno.wait_ready(120)
    bodies = (BODY, url_body(slow_image(image_server)))
    reconnecting = Load(dyno.port, clients=4, bodies=bodies).start()
    keeping = Load(dyno.port, clients=4, bodies=bodies, keep_alive=True).start()
    loads = {"reconnecting": reconnecting, "keep-alive": keeping}
    try:
        wait_for(lambda: all(ld.counts()["ok"] >= 20 for ld in loads.values()), 60, 0.1, "load")
        pids = dyno.host_pids()
        signalled_at = time.monotonic()
        signal_all(pids, signal.SIGTERM)
        code = dyno.wait_exit(HEROKU_KILL_AFTER_S + 5)
        exit_s = time.monotonic() - signalled_at
        left = alive(pids)
        for load in loads.values():
            load.wait_done(timeout=5)
    finally:
        for load in loads.values():
            load.stop()
    log = dyno.logs()
    for kind, load in loads.items():
        counts = load.counts()
        # Accepted before the signal and not answered yet. A connect still on its way when the
        # gateway closed its listener is refused, never accepted (a race any client of a
        # stopping server meets; CI saw a connect started just before the signal refused 13 ms
        # after it started): not a request in flight.
        in_flight = [
            o for o in load.outcomes if o.started < signalled_at < o.ended and o.kind != "refused"
        ]
        RESULTS.append(
            {
                "what": f"SIGTERM to all {len(pids)} processes, {kind} clients",
                **counts,
                "in_flight_ok": sum(o.kind == "ok" for o in in_flight),
                "exit_s": round(exit_s, 1),
            }
        )
        assert (counts["failed"], counts["lost"]) == (0, 0), (load.problems()[:5], log[-3000:])
        assert all(o.kind == "ok" for o in in_flight), [o for o in in_flight if o.kind != "ok"]
        # ... and nothing is refused before the signal
        assert all(o.ended > signalled_at for o in load.outcomes if o.kind == "refused")
    assert code == 0, log[-3000:]
    assert exit_s < HEROKU_KILL_AFTER_S
    assert not left, left
    # the model server outlived the gateway's drain
    assert log.index('"message": "stopped"') < log.index("Server stopped"), log[-3000:]
