"""Weighted rollouts in the gateway: the weights sync wrote (rollouts.json, re-read when it
changes) and which client key a request carries. The rules and the bucket function are the
contract in modelrepo/rollouts.py; the resolver (versions.py) applies them.

Client key, first found wins: the `client_key` query parameter, the `Dynoserve-Client-Key`
header, the API key the request presents (`Authorization: Bearer` or `X-API-Key`). None of
them: a random draw per request (docs/rollouts.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from werkzeug.datastructures import Headers

from gateway.errors import InvalidParameter
from modelrepo.rollouts import MAX_CLIENT_KEY_CHARS, ModelRollout, WeightsError, read_rollouts

log = logging.getLogger(__name__)

CLIENT_KEY_PARAM = "client_key"
CLIENT_KEY_HEADER = "Dynoserve-Client-Key"
VERSION_HEADER = "Dynoserve-Model-Version"
"""Response header naming the version that served an answer."""


class RolloutTable:
    """Thread-safe view of rollouts.json, re-read when its mtime or size changes; cheap to ask
    on every request. A damaged file keeps the weights read before (and is logged once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._models: dict[str, ModelRollout] = {}

    def split(self, model: str, label: str | None) -> dict[int, int] | None:
        """The weights a request for `model` (and `label`, None: unpinned) follows, if any."""
        rollout = self.models().get(model)
        return None if rollout is None else rollout.split_for(label)

    def models(self) -> dict[str, ModelRollout]:
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # sync replaces: a new inode
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._models = read_rollouts(self.path)
                except WeightsError as exc:
                    log.error("keeping the weights read before: %s", exc)
            return self._models


def offered_api_key(headers: Headers | Mapping[str, str]) -> str:
    """The API key a request presents: `Authorization: Bearer <key>` or `X-API-Key`."""
    header = headers.get("Authorization", "")
    offered = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return offered or headers.get("X-API-Key", "")


def client_key(args: Mapping[str, str], headers: Headers | Mapping[str, str]) -> str | None:
    """The request's client key (see the module's docstring for the order); None: none."""
    for where, value in (
        (f"query parameter {CLIENT_KEY_PARAM}", args.get(CLIENT_KEY_PARAM, "")),
        (f"header {CLIENT_KEY_HEADER}", headers.get(CLIENT_KEY_HEADER, "")),
    ):
        if value:
            if len(value) > MAX_CLIENT_KEY_CHARS:
                raise InvalidParameter(f"{where} must be at most {MAX_CLIENT_KEY_CHARS} characters")
            return value
    return offered_api_key(headers) or None
