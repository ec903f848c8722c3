"""Settings come from the environment once; bad values fail at start, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from envsettings import SettingsError
from gateway.settings import Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.port == 8080
    assert settings.grpc_deadline_s < 30
    assert settings.request_timeout_s < 30
    # A thread for every request fetching, queued or predicting, so waitress never queues one.
    expected = settings.max_fetches + settings.max_in_flight + settings.max_queue + 8
    assert settings.worker_threads == expected


def test_every_field_reads_its_variable() -> None:
    env = {
        "PORT": "9000",
        "DYNOSERVE_BIND_HOST": "127.0.0.1",
        "DYNOSERVE_MODEL_SERVER": "models:8500",
        "DYNOSERVE_MODELS": "a, b,,",
        "DYNOSERVE_MODEL_CONFIG_FILE": "/models/models.config",
        "DYNOSERVE_GRPC_DEADLINE_S": "2.5",
        "DYNOSERVE_FETCH_ALLOW_PRIVATE": "true",
        "DYNOSERVE_FETCH_ALLOW_HOSTS": ".example.com,cdn.test",
        "DYNOSERVE_API_KEYS": "k1,k2",
        "DYNOSERVE_MAX_IN_FLIGHT": "8",
        "DYNOSERVE_THREADS": "20",
    }
    settings = Settings.from_env(env)
    assert settings.port == 9000
    assert settings.models == ("a", "b")
    assert settings.model_config_file == Path("/models/models.config")
    assert settings.grpc_deadline_s == 2.5
    assert settings.fetch_allow_private is True
    assert settings.fetch_allow_hosts == (".example.com", "cdn.test")
    assert settings.api_keys == ("k1", "k2")
    assert settings.worker_threads == 20
    assert "k1" not in repr(settings)


def test_sync_files_follow_the_model_base_path_like_sync_does() -> None:
    settings = Settings.from_env({"DYNOSERVE_MODEL_BASE_PATH": "/models"})
    assert settings.model_config_file == Path("/models/models.config")
    assert settings.sync_status_file == Path("/models/sync-status.json")
    explicit = Settings.from_env(
        {"DYNOSERVE_MODEL_BASE_PATH": "/models", "DYNOSERVE_MODEL_CONFIG_FILE": "/etc/m.config"}
    )
    assert explicit.model_config_file == Path("/etc/m.config")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("DYNOSERVE_GRPC_DEADLINE_S", "30"),
        ("DYNOSERVE_GRPC_DEADLINE_S", "0"),
        ("DYNOSERVE_MAX_IN_FLIGHT", "0"),
        ("DYNOSERVE_MAX_QUEUE", "-1"),
        ("DYNOSERVE_ADMISSION_BUDGET_S", "30"),
        ("DYNOSERVE_ADMISSION_BUDGET_S", "0"),
        ("DYNOSERVE_REQUEST_TIMEOUT_S", "30"),
        ("DYNOSERVE_REQUEST_TIMEOUT_S", "0"),
        ("DYNOSERVE_MAX_FETCHES", "0"),
        ("DYNOSERVE_TRUST_X_FORWARDED_FOR", "perhaps"),
        ("DYNOSERVE_FETCH_ALLOW_PRIVATE", "maybe"),
        ("DYNOSERVE_GRPC_MAX_ATTEMPTS", "9"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    for (name,) in Settings.variables().values():
        assert f"`{name}`" in doc, name


def test_the_queue_budget_is_part_of_the_request_deadline() -> None:
    with pytest.raises(SettingsError, match=r"DYNOSERVE_ADMISSION_BUDGET_S.*REQUEST_TIMEOUT_S"):
        Settings.from_env(
            {"DYNOSERVE_REQUEST_TIMEOUT_S": "10", "DYNOSERVE_ADMISSION_BUDGET_S": "12"}
        )


def test_a_whole_batch_can_be_fetched() -> None:
    with pytest.raises(SettingsError, match="DYNOSERVE_MAX_FETCHES"):
        Settings.from_env({"DYNOSERVE_MAX_FETCHES": "8", "DYNOSERVE_MAX_BATCH": "16"})
