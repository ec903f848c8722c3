"""Flag parsing and config files, without starting a server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from serving import flags
from serving.local import config
from serving.local.errors import ConfigError, InvalidArgument
from serving.local.source import aspired_versions
from serving.settings import DEFAULT_FLAGS_FILE, Settings
from tests.support import VENV_PYTHON, python_env


def test_flags_parse_tf_serving_forms() -> None:
    options = flags.parse(
        [
            "--port=9000",
            "--rest_api_port",
            "8501",
            "--enable_batching",
            "--enable_model_warmup=false",
        ]
    )
    assert (options.port, options.rest_api_port) == (9000, 8501)
    assert options.enable_batching is True
    assert options.enable_model_warmup is False
    assert options.model_name == "default"
    assert options.file_system_poll_wait_seconds == 1


def test_flags_sort_out_ignored_and_unknown() -> None:
    options = flags.parse(["--ssl_config_file=x", "--no_such_flag=1", "stray", "-port=1"])
    assert options.ignored == ("ssl_config_file",)
    assert options.unknown == ("--no_such_flag=1", "stray", "-port=1")


def test_malformed_values_are_refused() -> None:
    with pytest.raises(flags.FlagValueError, match=r"Couldn't interpret value x for flag port\."):
        flags.parse(["--port=x"])
    with pytest.raises(flags.FlagValueError):
        flags.parse(["--enable_batching=maybe"])


def test_canonical_argv_is_what_the_stock_binary_understands() -> None:
    argv = ["--port", "8500", "--enable_batching", "--model_name", "m", "--unknown", "x"]
    assert flags.canonical_argv(argv) == [
        "--port=8500",
        "--enable_batching",
        "--model_name=m",
        "--unknown",
        "x",
    ]


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "file.config"
    path.write_text(text)
    return str(path)


def test_model_server_config_validation(tmp_path: Path) -> None:
    entry = 'config { name: "m" base_path: "%s" model_platform: "tensorflow" }'
    good = config.read_model_server_config(
        _write(tmp_path, "model_config_list { %s }" % (entry % "/m"))
    )
    assert good.model_config_list.config[0].name == "m"
    with pytest.raises(ConfigError, match="Invalid protobuf file"):
        config.read_model_server_config(_write(tmp_path, "model_config_list { config { nme: 1 } }"))
    twice = f"model_config_list {{ {entry % '/a'} {entry % '/b'} }}"
    with pytest.raises(InvalidArgument, match="Illegal to list model m multiple times"):
        config.read_model_server_config(_write(tmp_path, twice))
    with pytest.raises(InvalidArgument, match="absolute path or URI"):
        config.read_model_server_config(
            _write(tmp_path, "model_config_list { %s }" % (entry % "rel"))
        )
    no_platform = 'model_config_list { config { name: "m" base_path: "/m" } }'
    with pytest.raises(InvalidArgument, match="nor ModelServerConfig::model_platform"):
        config.read_model_server_config(_write(tmp_path, no_platform))
    with pytest.raises(ConfigError) as info:
        config.read_model_server_config(str(tmp_path / "missing.config"))
    assert info.value.code.name == "NOT_FOUND"


def test_batching_and_monitoring_files_use_the_official_messages(tmp_path: Path) -> None:
    batching = config.read_batching_parameters(
        _write(tmp_path, "max_batch_size { value: 32 }\nallowed_batch_sizes: 32\n")
    )
    assert batching.max_batch_size.value == 32
    with pytest.raises(ConfigError, match="Invalid protobuf file"):
        config.read_batching_parameters(_write(tmp_path, "max_batch_size: 32\n"))
    monitoring = config.read_monitoring_config(
        _write(tmp_path, "prometheus_config { enable: true }")
    )
    assert config.prometheus_path(monitoring) == "/monitoring/prometheus/metrics"
    assert config.prometheus_path(None) is None


def test_committed_descriptor_set_matches_the_proto_sources() -> None:
    # In a child process: protoc inside the pytest process (beside TF and grpc) can crash.
    result = subprocess.run(
        [str(VENV_PYTHON), "-m", "serving.local.protogen", "--check"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_version_policies() -> None:
    policy = config.ModelConfig().model_version_policy
    assert aspired_versions(policy, [1, 3, 2]) == [3]
    policy.latest.num_versions = 2
    assert aspired_versions(policy, [1, 3, 2]) == [2, 3]
    policy.specific.versions.extend([1, 7])
    assert aspired_versions(policy, [1, 3]) == [1]
    policy.all.SetInParent()
    assert aspired_versions(policy, [3, 1]) == [1, 3]


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {"DYNOSERVE_MODEL_SERVER_BIN": "/usr/bin/tfs", "DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS": "5"}
    )
    assert settings.model_server_bin == "/usr/bin/tfs"
    assert settings.config_wait_seconds == 5.0
    assert Settings.from_env({}).bind_host == "127.0.0.1"


def test_the_shipped_flags_and_config_files_parse_with_the_official_messages() -> None:
    shipped = flags.read_flags_file(str(DEFAULT_FLAGS_FILE))
    options = flags.parse(shipped)
    assert options.ignored == ()
    assert options.unknown == ()
    assert options.enable_batching
    batching = config.read_batching_parameters(options.batching_parameters_file)
    assert batching.max_batch_size.value == 16  # serving/batching.config says why
    assert batching.enable_large_batch_splitting.value
    assert batching.max_execution_batch_size.value == 8
    monitoring = config.read_monitoring_config(options.monitoring_config_file)
    assert config.prometheus_path(monitoring) == "/monitoring/prometheus/metrics"


def test_the_gateway_sends_no_batch_larger_than_the_shipped_model_server_takes() -> None:
    """A Predict of more images than max_batch_size is refused (no large-batch splitting), so
    the gateway's largest batch request must fit the shipped batching.config."""
    from gateway.settings import Settings as GatewaySettings

    options = flags.parse(flags.read_flags_file(str(DEFAULT_FLAGS_FILE)))
    batching = config.read_batching_parameters(options.batching_parameters_file)
    assert GatewaySettings.from_env({}).max_batch <= batching.max_batch_size.value


def test_command_line_flags_win_over_defaults() -> None:
    merged = flags.with_defaults(["--port", "9000"], ["--port=8500", "--rest_api_port=8501"])
    options = flags.parse(merged)
    assert (options.port, options.rest_api_port) == (9000, 8501)
