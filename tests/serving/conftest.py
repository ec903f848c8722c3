"""Fixtures of the serving tests: tiny models written once, one shared read-only server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.helpers import Server, copy_versions, model_entry, running_server, write_config


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of the tiny model (different seeds), written once by export.testing."""
    from export.testing import write_tiny_model

    base = tmp_path_factory.mktemp("tiny-repo")
    write_tiny_model(base, "tiny", 1, seed=0)
    write_tiny_model(base, "tiny", 2, seed=1)
    return base / "tiny"


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> Iterator[Server]:
    """A server: `tiny` (versions 1, 2 and labels), `other` (version 1); REST and metrics on."""
    root = tmp_path_factory.mktemp("shared")
    tiny = copy_versions(tiny_repo, root / "tiny", [1, 2])
    other = copy_versions(tiny_repo, root / "other", [1])
    config = write_config(
        root / "models.config",
        [
            model_entry("tiny", tiny, "all {}", {"stable": 1, "canary": 2}),
            model_entry("other", other),
        ],
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }'
    )
    args = [
        f"--model_config_file={config}",
        f"--monitoring_config_file={monitoring}",
        "--allow_version_labels_for_unavailable_models=true",
        "--file_system_poll_wait_seconds=0",
    ]
    with running_server(root / "server.log", args) as server:
        yield server
