"""Requests for what is on its way to this instance are 503 with retry, not 404: behind Heroku's
router another dyno may serve it already (tests/scaleout). That is a version pinned by number
that sync has installed and written into models.config, or that the model server is loading;
and any model while the instance boots (no models.config yet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.client import VersionStatus
from gateway.errors import GatewayError, ModelNotFound, ModelNotReady, NotFound, VersionNotFound
from gateway.interface import ImageInput, PredictRequest
from gateway.predictor import ModelServerPredictor
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


class NoModelServer(StubClient):
    """A model server that knows no model at all (booting, or the model is unknown)."""

    def status(self, model: str, request_id: str = "", timeout: float | None = None) -> Any:
        raise NotFound("Could not find any versions of model")


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (None, ModelNotReady),  # booting: sync has not written models.config yet
        ('model_config_list { config { name: "other" } }', ModelNotFound),
    ],
)
def test_an_unknown_model_is_503_only_while_no_model_is_configured(
    tmp_path: Path, config: str | None, error: type[GatewayError]
) -> None:
    config_file = tmp_path / "models.config"
    if config is not None:
        config_file.write_text(config)
    settings = Settings(model_config_file=config_file, sync_status_file=tmp_path / "none.json")
    predictor = ModelServerPredictor(settings, client=NoModelServer({}))  # type: ignore[arg-type]
    try:
        with pytest.raises(GatewayError) as info:
            predictor.predict(PredictRequest("m", (ImageInput(data=b"x"),)))
    finally:
        predictor.close()
    assert type(info.value) is error, info.value.message
