"""The server and launcher as processes: start-up refusals, flags, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.serving.helpers import (
    RED,
    copy_versions,
    jpeg,
    model_entry,
    predict_request,
    running_server,
    write_config,
)
from tests.support import GATEWAY_PYTHON, VENV_PYTHON, free_port, python_env

pytestmark = pytest.mark.slow


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_PYTHON), "-m", *args],
        env=python_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_malformed_flag_value_prints_usage_and_exits_255() -> None:
    result = _run(["serving.local", "--port=eighty"])
    assert result.returncode == 255
    assert "Couldn't interpret value eighty for flag port." in result.stderr
    assert "--model_config_file" in result.stdout


def test_unparsable_config_file_is_refused_like_tf_serving(tmp_path: Path) -> None:
    """Difference 2: protobuf's own parse error line comes with TF Serving's status."""
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: 'x' bogus_field: 1 } }")
    result = _run(["serving.local", f"--model_config_file={config}", f"--port={free_port()}"])
    assert result.returncode == 255
    assert (
        f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{config}'"
        in result.stdout
    )
    assert (
        "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:40: "
        'Message type "tensorflow.serving.ModelConfig" has no field named "bogus_field".'
    ) in result.stderr


def test_unparsable_batching_and_monitoring_files_name_the_error(
    tmp_path: Path, tiny_repo: Path
) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size: 32\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config {\n  enable: maybe\n}\n")
    common = ["serving.local", "--model_name=tiny", f"--model_base_path={base}"]
    for extra, proto, where in (
        (
            ["--enable_batching", f"--batching_parameters_file={batching}"],
            "BatchingParameters",
            "1:1",
        ),
        (
            [f"--monitoring_config_file={monitoring}", f"--rest_api_port={free_port()}"],
            "MonitoringConfig",
            "2:",
        ),
    ):
        result = _run([*common, f"--port={free_port()}", *extra])
        assert result.returncode == 255, result.stderr[-2000:]
        assert "Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file" in (
            result.stdout
        )
        assert f"Error parsing text-format tensorflow.serving.{proto}" in result.stderr
        assert f": {where}" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (  # difference 3 (server.cc)
            ["--batching_parameters_file=/nonexistent/batching.config"],
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true.",
        ),
        (
            ["--port=0"],
            "At least one of server_options.grpc_port or server_options.grpc_socket_path "
            "must be set.",
        ),
        (
            [
                "--tensorflow_session_parallelism=2",
                "--tensorflow_intra_op_parallelism=2",
                "--tensorflow_inter_op_parallelism=2",
            ],
            "Either configure server_options.tensorflow_session_parallelism or",
        ),
    ],
    ids=["batching-file-without-batching", "no-grpc-port", "all-parallelism-flags"],
)
def test_start_up_refusals_of_server_cc(flags: list[str], message: str) -> None:
    port = [] if "--port=0" in flags else [f"--port={free_port()}"]
    result = _run(["serving.local", "--model_base_path=/nonexistent/model", *port, *flags])
    assert result.returncode == 255
    assert f"Failed to start server. Error: INVALID_ARGUMENT: {message}" in result.stdout


def test_labels_at_startup_need_the_allow_flag(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    config = write_config(
        tmp_path / "models.config", [model_entry("tiny", base, labels={"stable": 1})]
    )
    result = _run(["serving.local", f"--model_config_file={config}", f"--port={free_port()}"])
    assert result.returncode == 255
    assert (
        "FAILED_PRECONDITION: Request to assign label to version 1 of model tiny, "
        "which is not currently available for inference" in result.stdout
    )


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    batching = tmp_path / "batching.config"
    # A long batch timeout keeps the requests queued while SIGTERM arrives.
    batching.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1500000 }")
    args = [
        "--model_name=tiny",
        f"--model_base_path={base}",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
        "--some_unknown_flag=1",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000",
    ]
    with running_server(tmp_path / "server.log", args) as server:
        started = threading.Barrier(5)

        def call(_: int) -> int:
            started.wait()
            response = server.predict.Predict(predict_request("tiny", jpeg(RED)), timeout=30)
            return int(response.model_spec.version.value)

        server.status("tiny")  # the channel is connected: the calls below go out at once
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(call, i) for i in range(4)]
            started.wait()
            # No server-side signal says "queued"; the 1.5 s batch timeout leaves ample margin.
            time.sleep(0.5)
            assert server.process.proc is not None
            os.kill(server.process.proc.pid, signal.SIGTERM)
            assert [f.result() for f in futures] == [1, 1, 1, 1]
        assert server.process.proc.wait(30) == 0
        log = server.process.log()
    assert "unknown argument: --some_unknown_flag=1" in log
    assert (
        "--grpc_channel_arguments is a TF Serving flag this local server accepts but ignores" in log
    )
    assert "Done unloading servable version {name: tiny version: 1}" in log


def _fake_stock_server(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for tensorflow_model_server (FAKE: it only records its argv)."""
    record = tmp_path / "argv.txt"
    script = tmp_path / "fake_tensorflow_model_server"
    script.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def test_launcher_execs_stock_binary_with_canonical_flags(tmp_path: Path) -> None:
    script, record = _fake_stock_server(tmp_path)
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}")
    env = {"DYNOSERVE_MODEL_SERVER_BIN": str(script), "DYNOSERVE_MODEL_SERVER_FLAGS": ""}
    result = _run(
        ["serving", "--port", "8500", f"--model_config_file={config}", "--enable_batching"], env
    )
    assert result.returncode == 0, result.stderr
    assert record.read_text().split() == [
        "--port=8500",
        f"--model_config_file={config}",
        "--enable_batching",
    ]


def test_launcher_waits_for_the_config_file(tmp_path: Path) -> None:
    script, record = _fake_stock_server(tmp_path)
    config = tmp_path / "models.config"
    env = {
        "DYNOSERVE_MODEL_SERVER_BIN": str(script),
        "DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS": "30",
        "DYNOSERVE_MODEL_SERVER_FLAGS": "",
    }
    process = subprocess.Popen(
        [str(VENV_PYTHON), "-m", "serving", f"--model_config_file={config}"],
        env=python_env(env),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first_line = process.stderr.readline()  # the launcher announces that it is waiting
        assert "waiting up to 30s" in first_line
        assert process.poll() is None, "the launcher must wait, not start the server"
        config.write_text("model_config_list {}")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert record.read_text().split() == [f"--model_config_file={config}"]


def test_launcher_gives_up_when_the_config_never_appears(tmp_path: Path) -> None:
    env = {"DYNOSERVE_MODEL_CONFIG_WAIT_SECONDS": "0.3", "DYNOSERVE_MODEL_SERVER_LOCAL": "1"}
    result = _run(["serving", f"--model_config_file={tmp_path / 'missing.config'}"], env)
    assert result.returncode == 3
    assert "did not appear" in result.stderr


def test_launcher_runs_the_local_server_without_a_stock_binary() -> None:
    env = {"DYNOSERVE_MODEL_SERVER_LOCAL": "1"}
    result = _run(["serving", "--version"], env)
    assert result.returncode == 0, result.stderr
    assert "TensorFlow ModelServer: dynoserve-local" in result.stdout


def test_launcher_adds_the_project_flags_the_command_line_does_not_set(tmp_path: Path) -> None:
    script, record = _fake_stock_server(tmp_path)
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}")
    env = {"DYNOSERVE_MODEL_SERVER_BIN": str(script)}
    result = _run(["serving", "--port=9100", f"--model_config_file={config}"], env)
    assert result.returncode == 0, result.stderr
    argv = record.read_text().split()
    assert "--port=9100" in argv
    assert "--port=8500" not in argv
    conf = Path(__file__).resolve().parents[2] / "serving"
    assert f"--batching_parameters_file={conf / 'batching.config'}" in argv
    assert "--allow_version_labels_for_unavailable_models=true" in argv


def test_launcher_started_without_tensorflow_runs_the_local_server_with_the_dev_venv() -> None:
    # The gateway venv has no TensorFlow: supervisord may use it to run the launcher.
    gateway_python = GATEWAY_PYTHON
    if not gateway_python.exists():
        pytest.skip("no gateway venv")
    result = subprocess.run(
        [str(gateway_python), "-m", "serving", "--version"],
        env=python_env({"DYNOSERVE_MODEL_SERVER_LOCAL": "1"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "TensorFlow ModelServer: dynoserve-local" in result.stdout
