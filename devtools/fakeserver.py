"""A fake of TF Serving's REST model status API on loopback, for the sync tests and the sync
benchmark (bench/sync_measure.py): sync asks it which versions are loaded before it moves a
label or deletes a version. A fake, because the real server would need real SavedModels and
TensorFlow, where sync only moves files.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from modelrepo import config_file
from modelrepo.modelconfig import read_previous


class FakeRestStatusServer:
    """A fake of TF Serving's REST model status API (`GET /v1/models/<name>`) on loopback.

    Tests set `states[model] = {version: "AVAILABLE", ...}`; unknown models answer 404 as TF
    Serving does. `serve_config()` makes it follow models.config like a well-behaved server.
    """

    def __init__(self) -> None:
        self.states: dict[str, dict[int, str]] = {}
        self.requests = 0
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve_config(self, env: Mapping[str, str]) -> None:
        """Load exactly what models.config lists, as TF Serving would after its next poll."""
        path = config_file(Path(env["DYNOSERVE_MODEL_BASE_PATH"]))
        self.states = {
            name: dict.fromkeys(model.versions, "AVAILABLE")
            for name, model in read_previous(path).items()
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests += 1
                match = re.fullmatch(r"/v1/models/([^/]+)", self.path)
                states = fake.states.get(match.group(1)) if match else None
                if not states:
                    self._reply(404, {"error": "Could not find any versions of model"})
                    return
                items = [
                    {"version": str(v), "state": s, "status": {"error_code": "OK"}}
                    for v, s in sorted(states.items())
                ]
                self._reply(200, {"model_version_status": items})

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FakeRestStatusServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
