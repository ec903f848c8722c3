"""A request pinned to a version that is on its way to this instance (sync installed it and wrote
it into models.config, or the model server is loading it) is a 503 with retry, not a 404:
behind Heroku's router another dyno may serve that version already (tests/scaleout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.client import VersionStatus
from gateway.errors import GatewayError, ModelNotReady, NotFound, VersionNotFound
from gateway.predictor import ModelServerPredictor
from gateway.results import ImageInput, PredictRequest
from gateway.settings import Settings


class StubClient:
    """Stands in for the gRPC client: every version unknown to Predict, states as scripted."""

    def __init__(self, states: dict[int, str]) -> None:
        self.states = states

    def metadata(self, *args: Any, **kwargs: Any) -> Any:
        raise NotFound("Servable not found")

    def status(self, model: str, request_id: str = "", timeout: float | None = None) -> Any:
        return [VersionStatus(v, s, 0, "") for v, s in sorted(self.states.items())]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("states", "served", "error"),
    [
        ({3: "AVAILABLE"}, [3], VersionNotFound),  # no such version here, none coming
        ({3: "AVAILABLE", 5: "END"}, [3], VersionNotFound),  # unloaded: removed
        ({3: "AVAILABLE"}, [3, 5], ModelNotReady),  # in models.config, before the server's poll
        ({3: "AVAILABLE", 5: "START"}, [3, 5], ModelNotReady),
        ({3: "AVAILABLE", 5: "LOADING"}, [3, 5], ModelNotReady),
        ({3: "AVAILABLE"}, None, VersionNotFound),  # no status file (sync never ran)
    ],
)
def test_a_pinned_version_on_its_way_is_503(
    tmp_path: Path, states: dict[int, str], served: list[int] | None, error: type[GatewayError]
) -> None:
    status_file = tmp_path / "sync-status.json"
    if served is not None:
        status_file.write_text(json.dumps({"models": {"m": {"served": served}}}))
    settings = Settings(sync_status_file=status_file)
    predictor = ModelServerPredictor(settings, client=StubClient(states))  # type: ignore[arg-type]
    try:
        with pytest.raises(GatewayError) as info:
            predictor.predict(PredictRequest("m", (ImageInput(data=b"x"),), version=5))
    finally:
        predictor.close()
    assert type(info.value) is error, info.value.message
    if error is ModelNotReady:
        assert info.value.status == 503
        assert "version 5" in info.value.message
