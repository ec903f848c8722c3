"""Shutdown under load: Heroku's SIGTERM to every process at once, SIGTERM to supervisord alone,
and `docker stop` (SIGTERM to the entrypoint, PID 1), with clients that open a connection per
request and clients that keep theirs (a router or proxy with upstream keep-alive). Zero accepted
requests fail or are lost, new connections are refused (or answered 503) from the signal on, all
exits within 25 s; a kept-alive connection gets its last answer with `Connection: close`."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from devtools.dynostack import Dyno
from devtools.load import BODY, SAMPLE, Load, answered_in_drain, drain_times, url_body
from tests.dyno.conftest import RESULTS
from tests.dyno.stack import Layout, programs, signal_all
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

# The gateway's drain ends when no connection is busy, long before this (its default timeout).
SHUTDOWN_TIMEOUT_S = 12.0

TARGETS = {
    "every process": lambda roles: list(roles.values()),
    "supervisord alone": lambda roles: [roles["supervisord"]],
    "entrypoint alone (docker stop)": lambda roles: [roles["entrypoint"]],
}
CASES = [(target, False) for target in TARGETS] + [("every process", True)]


@pytest.mark.parametrize(
    ("target", "keep_alive"),
    CASES,
    ids=[f"{t}{', kept-alive connections' if k else ''}" for t, k in CASES],
)
def test_sigterm_under_load_loses_nothing(
    target: str,
    keep_alive: bool,
    make_dyno: Callable[..., Dyno],
    make_layout: Callable[[], Layout],
    image_server: ImageServer,
) -> None:
    slow_url = slow_image(image_server)
    dyno = make_dyno(make_layout(), DYNOSERVE_FETCH_ALLOW_PRIVATE="true")
    dyno.wait_ready()
    roles = programs(dyno)
    assert len(roles) == 5, roles
    bodies = (BODY, url_body(slow_url))
    load = Load(dyno.port, clients=6, bodies=bodies, keep_alive=keep_alive).start()
    try:
        wait_for(lambda: load.counts()["ok"] >= 30, timeout=30, what="load to warm up")
        signalled = (time.time(), time.monotonic())
        signalled_at = signalled[1]
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
            "fault": f"SIGTERM to {target}" + (", kept-alive clients" if keep_alive else ""),
            **counts,
            "in_flight_at_signal_ok": sum(o.kind == "ok" for o in in_flight),
            "exit_s": round(exit_s, 2),
            "gateway_drain_s": gateway_drain_s(drain_times(dyno.log())),
        }
    )
    log = dyno.log()
    assert (counts["failed"], counts["lost"]) == (0, 0), (
        f"signalled at {signalled_at:.6f}",
        load.problems()[:5],
        log[-3000:],
    )
    assert all(o.kind == "ok" for o in in_flight), [o for o in in_flight if o.kind != "ok"]
    assert code == 0, log[-3000:]
    assert exit_s < EXIT_DEADLINE_S
    assert all(o.kind in ("refused", "shed") for o in late), [o for o in late if o.kind == "ok"]
    # Only a request sent after the signal may meet a connection the gateway closed idle.
    assert all(o.started > signalled_at for o in load.outcomes if o.kind == "closed")
    after = answered_in_drain(load.outcomes, drain_times(log), signalled)
    assert all(o.closing for o in after), [o for o in after if not o.closing]
    # The drain ended when the last request was answered, not at its timeout.
    assert "shutdown timeout" not in log, log[-3000:]
    assert exit_s < SHUTDOWN_TIMEOUT_S, exit_s
    # The model server outlived the gateway's drain.
    assert log.index('"message": "stopped"') < log.index("Server stopped"), log[-3000:]


def gateway_drain_s(times: dict[str, float]) -> float | None:
    if len(times) < 2:
        return None
    return round(times["stopped"] - times["stop signal"], 2)


def slow_image(image_server: ImageServer) -> str:
    """A sample whose host answers SLOW_IMAGE_S late."""
    return image_server.add_delayed("/slow-sample.png", SAMPLE.read_bytes(), SLOW_IMAGE_S)
