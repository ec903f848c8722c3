"""Asks the model server which versions it holds, through TF Serving's REST model status API.

`GET /v1/models/<name>` answers `{"model_version_status": [{"version": "2", "state":
"AVAILABLE", "status": {"error_code": "OK", ...}}]}`; sync uses it to move labels only onto
loaded versions, to delete a version's files only once the server has let go of it, and to
report a version the server failed to load (state END with an error) instead of calling it
served.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

# States in which the server holds (or is about to hold) a version's files.
HOLDING_STATES = frozenset({"START", "LOADING", "AVAILABLE", "UNLOADING"})


@dataclass(frozen=True)
class VersionState:
    """One version as the model server reports it."""

    state: str
    error: str = ""
    """The load error when the server gave up on the version (state END), else empty."""


class ServerStatus:
    """Client for the model server's model status endpoint."""

    def __init__(self, rest_url: str, timeout: float = 2.0) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.timeout = timeout

    def states(self, model: str) -> dict[int, str] | None:
        """Version -> state for `model`; {} if the server does not know it; None if unreachable."""
        versions = self.versions(model)
        return None if versions is None else {v: s.state for v, s in versions.items()}

    def versions(self, model: str) -> dict[int, VersionState] | None:
        """Like `states`, with the error of each version the server failed to load."""
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

    def _get(self, url: str) -> dict[int, VersionState]:
        with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 (configured http URL)
            body = json.loads(response.read())
        versions: dict[int, VersionState] = {}
        for item in body.get("model_version_status", []):
            status = item.get("status") or {}
            code = str(status.get("error_code", "OK"))
            error = "" if code in ("OK", "0") else str(status.get("error_message") or code)
            versions[int(item["version"])] = VersionState(str(item.get("state", "")), error)
        return versions
