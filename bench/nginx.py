"""The benchmark's image host: nginx on loopback, serving a folder of JPEGs.

The configuration is generated into a temporary folder; nginx runs in the foreground as the
current user (no root paths, no system service), with a listen backlog and keep-alive sized for
100 clients behind the gateway's connection pool.
"""

from __future__ import annotations

from pathlib import Path

from devtools import nginx
from devtools.net import free_port
from devtools.processes import ManagedProcess

# The gateway's fetch pool keeps connections open between requests; nginx must not drop them
# before the pool does, nor after a fixed number of requests mid-benchmark.
KEEPALIVE_TIMEOUT_S = 75
KEEPALIVE_REQUESTS = 1_000_000
BACKLOG = 4096  # Linux caps it at net.core.somaxconn (4096 on current kernels)
WORKER_CONNECTIONS = 4096

_HTTP = """\
    types {{ image/jpeg jpg jpeg; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout {keepalive_timeout}s;
    keepalive_requests {keepalive_requests};
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        root {root};
    }}"""


def render_config(root: Path, run: Path, port: int) -> str:
    """nginx.conf serving `root` on 127.0.0.1:`port`, keeping its files under `run`."""
    http = _HTTP.format(
        root=root,
        port=port,
        backlog=BACKLOG,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        keepalive_requests=KEEPALIVE_REQUESTS,
    )
    return nginx.render("the benchmark's image host", run, http, WORKER_CONNECTIONS)


def start_nginx(root: Path, run: Path) -> tuple[ManagedProcess, str]:
    """nginx serving `root`, ready; returns the process and its base URL."""
    port = free_port()
    proc = nginx.start(render_config(root, run, port), run, port)
    return proc, f"http://127.0.0.1:{port}"
