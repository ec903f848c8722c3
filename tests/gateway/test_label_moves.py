"""A label move: sync rewrites models.config, the model server applies it at its next config
poll. The gateway asks the server again as soon as models.config moves a label (no 5 s cache on
top of the poll), and /v1/models says which labels the server does not answer from their new
target yet (`label_moves`), so the description and `?label=` answers never disagree unsaid."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import versions
from gateway.app import create_app
from gateway.catalog import ModelCatalog
from gateway.client import VersionMetadata
from gateway.errors import InvalidArgument
from gateway.interface import LabelMove
from gateway.settings import Settings
from gateway.versions import VersionResolver
from tests.gateway.conftest import Stack

CONFIG = (
    'model_config_list {{ config {{ name: "m" version_labels {{ key: "stable" value: {v} }} }} }}'
)


class LabelServer:
    """Stands in for the model server's GetModelMetadata: `stable` maps as scripted (the
    server's own view, applied at its config poll); every call counted."""

    def __init__(self, stable: int | None) -> None:
        self.stable = stable
        self.calls = 0

    def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *args: Any,
        **kw: Any,
    ) -> VersionMetadata:
        self.calls += 1
        found = version if version is not None else self.stable if label == "stable" else 9
        if found is None:  # TF Serving's code for a label it does not know
            raise InvalidArgument("Unrecognized servable version label: stable")
        return VersionMetadata(model, found, {})


def move(config: Path, version: int) -> None:
    """Rewrite models.config as sync does (the catalog sees a new size or mtime)."""
    rewrite(config, CONFIG.format(v=version))


def rewrite(config: Path, text: str) -> None:
    """Write `text` with an mtime the catalog has not seen (same size, coarse clocks)."""
    before = config.stat().st_mtime_ns if config.exists() else 0
    config.write_text(text)
    later = max(config.stat().st_mtime_ns, before + 1_000_000)
    os.utime(config, ns=(later, later))


def test_a_label_move_is_asked_at_once_not_after_the_alias_cache(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    move(config, 1)
    server = LabelServer(stable=1)
    resolver = VersionResolver(server, catalog=ModelCatalog((), config))  # type: ignore[arg-type]
    assert resolver.resolve("m", None, "stable").version == 1
    assert resolver.resolve("m", None, "stable").version == 1
    assert server.calls == 1  # cached: models.config still points stable at 1
    move(config, 2)
    server.stable = 2  # the server applied the move (its poll)
    assert resolver.resolve("m", None, "stable").version == 2  # well within ALIAS_TTL_S
    assert server.calls == 2
    assert resolver.pending_moves("m") == {}


def test_a_move_the_server_has_not_applied_is_reported_and_asked_again_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(versions, "PENDING_TTL_S", 0.2)
    config = tmp_path / "models.config"
    move(config, 1)
    server = LabelServer(stable=1)
    resolver = VersionResolver(server, catalog=ModelCatalog((), config))  # type: ignore[arg-type]
    assert resolver.resolve("m", None, "stable").version == 1
    move(config, 2)  # sync moved it; the server has not polled yet
    assert resolver.resolve("m", None, "stable").version == 1  # what is served, said so
    assert resolver.pending_moves("m") == {"stable": LabelMove(serving=1, target=2)}
    calls = server.calls
    resolver.resolve("m", None, "stable")
    assert server.calls == calls  # a pending answer is cached too, briefly
    server.stable = 2
    time.sleep(0.25)
    assert resolver.resolve("m", None, "stable").version == 2
    assert resolver.pending_moves("m") == {}


def test_a_new_label_the_server_does_not_know_yet_is_pending_with_no_version(
    tmp_path: Path,
) -> None:
    config = tmp_path / "models.config"
    move(config, 3)
    resolver = VersionResolver(LabelServer(stable=None), catalog=ModelCatalog((), config))  # type: ignore[arg-type]
    assert resolver.pending_moves("m") == {"stable": LabelMove(serving=None, target=3)}


@pytest.mark.slow
def test_the_description_reports_a_pending_move_on_the_real_stack(
    model_stack: Stack, tmp_path: Path
) -> None:
    """The gateway reads a models.config that has moved `stable` 1 -> 2; the model server still
    runs the old one (stable = 1), as between sync's rewrite and the server's poll."""
    config = tmp_path / "models.config"
    text = model_stack.config_file.read_text()
    stable = 'version_labels { key: "stable" value: 1 }'
    assert stable in text
    config.write_text(text.replace(stable, 'version_labels { key: "stable" value: 2 }'))
    app = create_app(Settings(model_server=model_stack.grpc_target, model_config_file=config))
    client = app.test_client()
    try:
        described = client.get("/v1/models/shapes").get_json()
        assert described["labels"] == {"canary": 2, "stable": 2}
        assert described["label_moves"] == {"stable": {"serving": 1, "target": 2}}
        assert described["signature_version"] == 2
        listed = client.get("/v1/models").get_json()["models"][0]
        assert listed["label_moves"] == described["label_moves"]
        png = {"image_b64": _png()}
        answer = client.post("/v1/models/shapes:predict?label=stable", json=png)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["version"] == 1  # the answer names what served it
        rewrite(config, text)  # models.config agrees with the server again: nothing pending
        described = client.get("/v1/models/shapes").get_json()
        assert "label_moves" not in described, described
        assert described["labels"] == {"canary": 2, "stable": 1}
    finally:
        app.extensions["dynoserve.predictor"].close()


def _png() -> str:
    import base64

    from tests.imagehost import image_bytes

    return base64.b64encode(image_bytes("PNG", size=(40, 40), color="green")).decode()
