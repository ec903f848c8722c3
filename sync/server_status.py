"""Asks the model server which versions it holds, through TF Serving's REST model status API.

`GET /v1/models/<name>` answers `{"model_version_status": [{"version": "2", "state":
"AVAILABLE", ...}]}`; sync uses it to move labels only onto loaded versions and to delete a
version's files only once the server has let go of it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

# States in which the server holds (or is about to hold) a version's files.
HOLDING_STATES = frozenset({"START", "LOADING", "AVAILABLE", "UNLOADING"})


class ServerStatus:
    """Client for the model server's model status endpoint."""

    def __init__(self, rest_url: str, timeout: float = 2.0) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.timeout = timeout

    def states(self, model: str) -> dict[int, str] | None:
        """Version -> state for `model`; {} if the server does not know it; None if unreachable."""
        url = f"{self.rest_url}/v1/models/{urllib.parse.quote(model, safe='')}"
        for _attempt in range(2):
            try:
                return self._get(url)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code == 404:
                    return {}
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreachable or not TF Serving's answer: treat as no answer
        return None

    def _get(self, url: str) -> dict[int, str]:
        with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 (configured http URL)
            body = json.loads(response.read())
        states: dict[int, str] = {}
        for item in body.get("model_version_status", []):
            states[int(item["version"])] = str(item.get("state", ""))
        return states
