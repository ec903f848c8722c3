"""/v1/models/<m> shows the versions that failed to reach the model server (sync's status file)
beside the ones the server reports, each with its error (issue 10: a corrupt version was
reported nowhere)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.client import VersionStatus
from gateway.predictor import ModelServerPredictor
from gateway.settings import Settings


class StubClient:
    """Stands in for the gRPC client: GetModelStatus as scripted."""

    def __init__(self, statuses: list[VersionStatus]) -> None:
        self.statuses = statuses

    def status(self, model: str, request_id: str = "", timeout: float | None = None) -> Any:
        return self.statuses

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("server", "shown"),
    [
        # never reached the server (checksum mismatch): sync's error, as END
        ([], {2: ("END", "sync: checksum")}),
        # the server's own load error wins over sync's copy of it
        ([VersionStatus(2, "END", 2, "Read less bytes")], {2: ("END", "Read less bytes")}),
        # still loading, sync already knows it failed once: END with the error
        ([VersionStatus(2, "LOADING", 0, "")], {2: ("END", "sync: checksum")}),
        # the server has it: what the server says
        ([VersionStatus(2, "AVAILABLE", 0, "")], {2: ("AVAILABLE", "")}),
    ],
)
def test_failed_versions_are_listed_with_their_error(
    tmp_path: Path, server: list[VersionStatus], shown: dict[int, tuple[str, str]]
) -> None:
    status_file = tmp_path / "sync-status.json"
    failed = {"2": "sync: checksum"}
    status_file.write_text(
        json.dumps({"models": {"m": {"served": [1], "failed_versions": failed}}})
    )
    statuses = [VersionStatus(1, "AVAILABLE", 0, ""), *server]
    settings = Settings(sync_status_file=status_file, models=("m",))
    predictor = ModelServerPredictor(settings, client=StubClient(statuses))  # type: ignore[arg-type]
    try:
        (info,) = predictor.list_models()
    finally:
        predictor.close()
    assert {v.version: (v.state, v.error) for v in info.versions} == {
        1: ("AVAILABLE", ""),
        **shown,
    }
