"""Shutdown under load: Heroku's SIGTERM to every process at once, SIGTERM to supervisord alone,
and `docker stop` (SIGTERM to the entrypoint, PID 1). Zero accepted requests fail or are lost,
new connections are refused (or answered 503) from the signal on, all exits within 25 s."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.dyno.conftest import RESULTS
from tests.dyno.load import BODY, SAMPLE, Load, url_body
from tests.dyno.stack import Dyno, Layout, signal_all
from tests.imagehost import ImageServer
from tests.support import wait_for

pytestmark = pytest.mark.slow

EXIT_DEADLINE_S = 25.0
# From the signal, the gateway lets handshakes already under way complete (0.1 s) before it
# closes its socket; allow for scheduling on a busy 2-core machine.
REFUSE_AFTER_S = 1.0
# Half the clients send an image URL whose host takes this long: at the signal their requests
# are inside the gateway and reach the model server only after it (stock TF Serving, dead on
# SIGTERM, would fail them).
SLOW_IMAGE_S = 0.4

TARGETS = {
    "every process": lambda roles: list(roles.values()),
    "supervisord alone": lambda roles: [roles["supervisord"]],
    "entrypoint alone (docker stop)": lambda roles: [roles["entrypoint"]],
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_sigterm_under_load_loses_nothing(
    target: str,
    make_dyno: Callable[..., Dyno],
    make_layout: Callable[[], Layout],
    image_server: ImageServer,
) -> None:
    slow_url = slow_image(image_server)
    dyno = make_dyno(make_layout(), DYNOSERVE_FETCH_ALLOW_PRIVATE="true")
    dyno.wait_ready()
    roles = dyno.processes()
    assert len(roles) == 5, roles
    load = Load(dyno.port, clients=6, bodies=(BODY, url_body(slow_url))).start()
    try:
        wait_for(lambda: load.counts()["ok"] >= 30, timeout=30, what="load to warm up")
        signalled_at = time.monotonic()
        signal_all(TARGETS[target](roles), signal.SIGTERM)
        code = dyno.wait_exit(timeout=EXIT_DEADLINE_S + 5)
        exit_s = time.monotonic() - signalled_at
        load.wait_done(timeout=5)
    finally:
        load.stop()
    counts = load.counts()
    in_flight = [o for o in load.outcomes if o.started < signalled_at < o.ended]
    late = [o for o in load.outcomes if o.started > signalled_at + REFUSE_AFTER_S]
    RESULTS.append(
        {
            "fault": f"SIGTERM to {target}",
            **counts,
            "in_flight_at_signal_ok": sum(o.kind == "ok" for o in in_flight),
            "exit_s": round(exit_s, 2),
        }
    )
    log = dyno.log()
    assert (counts["failed"], counts["lost"]) == (0, 0), (load.problems()[:5], log[-3000:])
    assert all(o.kind == "ok" for o in in_flight), [o for o in in_flight if o.kind != "ok"]
    assert code == 0, log[-3000:]
    assert exit_s < EXIT_DEADLINE_S
    assert all(o.kind in ("refused", "shed") for o in late), [o for o in late if o.kind == "ok"]
    # The model server outlived the gateway's drain.
    assert log.index('"message": "stopped"') < log.index("Server stopped"), log[-3000:]


def slow_image(image_server: ImageServer) -> str:
    png = SAMPLE.read_bytes()

    def route(h: Any) -> None:
        image_server.closing.wait(SLOW_IMAGE_S)
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(png)))
        h.end_headers()
        h.wfile.write(png)

    image_server.routes["/slow-sample.png"] = route
    return image_server.base + "/slow-sample.png"
