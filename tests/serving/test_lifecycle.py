"""Version lifecycle against real server processes: polling, policies, failures, reloads, warmup."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    prediction_log_pb2,
)

from serving.local.config import read_model_server_config
from tests.serving.helpers import (
    RED,
    Server,
    copy_versions,
    jpeg,
    model_entry,
    predict_request,
    running_server,
    write_config,
)
from tests.support import wait_for

pytestmark = pytest.mark.slow

FAST_POLL = ["--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"]


def _version_answering(server: Server, model: str) -> int:
    response = server.predict.Predict(predict_request(model, jpeg(RED)), timeout=30)
    return int(response.model_spec.version.value)


def _stage_version(source: Path, base: Path, version: int, as_version: int) -> None:
    """Copy a version in beside the model and rename it into place, as sync does."""
    staging = base / f".staging-{as_version}"
    shutil.copytree(source / str(version), staging)
    staging.rename(base / str(as_version))


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batching"])
def test_new_version_replaces_old_under_load_without_failed_requests(
    tmp_path: Path, tiny_repo: Path, batching: bool
) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    args = ["--model_name=tiny", f"--model_base_path={base}", *FAST_POLL]
    if batching:
        args.append("--enable_batching")
    with running_server(tmp_path / "server.log", args) as server:
        answered: list[int] = []
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            stub = server.predict
            while not stop.is_set():
                try:
                    response = stub.Predict(predict_request("tiny", jpeg(RED)), timeout=30)
                    answered.append(response.model_spec.version.value)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

        callers = [threading.Thread(target=load) for _ in range(4)]
        for caller in callers:
            caller.start()
        try:
            wait_for(lambda: len(answered) > 5, 30, what="requests before the new version")
            _stage_version(tiny_repo, base, 2, 2)
            wait_for(lambda: server.status("tiny").get(1, ("",))[0] == "END", 60, what="v1 END")
            count = len(answered)
            wait_for(lambda: len(answered) > count + 5, 30, what="requests after the swap")
        finally:
            stop.set()
            for caller in callers:
                caller.join()
        assert failures == []
        assert answered[0] == 1
        assert answered[-1] == 2
        assert server.status("tiny") == {2: ("AVAILABLE", ""), 1: ("END", "")}
        log = server.process.log()
        # Availability preserving: version 2 became AVAILABLE before version 1 started unloading.
        assert log.index(
            "Successfully loaded servable version {name: tiny version: 2}"
        ) < log.index("Unloading servable version {name: tiny version: 1}")


def test_corrupt_version_is_reported_and_old_keeps_serving(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    args = ["--model_name=tiny", f"--model_base_path={base}", *FAST_POLL]
    with running_server(tmp_path / "server.log", args) as server:
        broken = tmp_path / "broken"
        shutil.copytree(tiny_repo / "1", broken)
        (broken / "saved_model.pb").write_bytes(b"\x08this is not a SavedModel")
        broken.rename(base / "3")
        wait_for(lambda: server.status("tiny").get(3, ("",))[0] == "END", 30, what="v3 END")
        _, error = server.status("tiny")[3]
        assert error, "the failed version must carry its error"
        assert server.status("tiny")[1] == ("AVAILABLE", "")
        assert _version_answering(server, "tiny") == 1
        _, body = server.rest("GET", "/v1/models/tiny/versions/3")
        assert body["model_version_status"][0]["status"]["error_code"] != "OK"
        assert "Loading servable: {name: tiny version: 3} failed" in server.process.log()


def test_complete_but_unloadable_version_is_attempted_and_reported(
    tmp_path: Path, tiny_repo: Path
) -> None:
    """Difference 4: no completeness guard hides it; it fails, END with the error, old serves."""
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    args = ["--model_name=tiny", f"--model_base_path={base}", *FAST_POLL]
    with running_server(tmp_path / "server.log", args) as server:
        staging = base / ".staging-2"
        shutil.copytree(tiny_repo / "2", staging, ignore=shutil.ignore_patterns("variables.*"))
        assert (staging / "variables").is_dir()  # present, without its index and shards
        staging.rename(base / "2")
        installed = time.monotonic()
        wait_for(lambda: server.status("tiny").get(2, ("",))[0] == "END", 30, what="v2 END")
        # The one remaining guard (files quiet for 2 s) may delay it by seconds, not hide it.
        assert time.monotonic() - installed < 10
        code, error = _version_status(server, 2)
        assert code == "NOT_FOUND"
        assert error.startswith("Unsuccessful TensorSliceReader constructor: ")
        assert server.status("tiny")[1] == ("AVAILABLE", "")
        assert _version_answering(server, "tiny") == 1
        assert "Loading servable: {name: tiny version: 2} failed" in server.process.log()


def _version_status(server: Server, version: int) -> tuple[str, str]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tiny"
    request.model_spec.version.value = version
    (status,) = server.models.GetModelStatus(request, timeout=10).model_version_status
    return _CODE_NAMES[status.status.error_code], status.status.error_message


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _bad_pixels_record() -> bytes:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "predict_pixels"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 5, 3), np.float32)))
    return log.SerializeToString()


def test_warmup_errors_carry_tf_servings_codes(tmp_path: Path, tiny_repo: Path) -> None:
    """Difference 5: a corrupt warmup file is DATA_LOSS; a bad record fails as its request."""
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    args = ["--model_name=tiny", f"--model_base_path={base}", *FAST_POLL]
    with running_server(tmp_path / "server.log", args) as server:
        corrupt = tmp_path / "corrupt"
        shutil.copytree(tiny_repo / "2", corrupt)
        (corrupt / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"not TFRecord" * 9)
        corrupt.rename(base / "2")
        wait_for(lambda: server.status("tiny").get(2, ("",))[0] == "END", 30, what="v2 END")
        code, message = _version_status(server, 2)
        assert code == "DATA_LOSS"
        assert message.endswith(". Please verify your warmup data is in TFRecord format.")

        wrong_shape = tmp_path / "wrong-shape"
        shutil.copytree(tiny_repo / "2", wrong_shape)
        with tf.io.TFRecordWriter(
            str(wrong_shape / "assets.extra" / "tf_serving_warmup_requests")
        ) as writer:
            writer.write(_bad_pixels_record())
        wrong_shape.rename(base / "3")
        wait_for(lambda: server.status("tiny").get(3, ("",))[0] == "END", 30, what="v3 END")
        code, message = _version_status(server, 3)
        assert code == "INVALID_ARGUMENT"
        assert message.startswith("input tensor shape does not match signature: pixels")
        assert _version_answering(server, "tiny") == 1


def test_version_policies_and_config_file_polling(tmp_path: Path, tiny_repo: Path) -> None:
    tiny = copy_versions(tiny_repo, tmp_path / "tiny", [1, 2])
    other = copy_versions(tiny_repo, tmp_path / "other", [1])
    config = write_config(tmp_path / "models.config", [model_entry("tiny", tiny, "all {}")])
    args = [
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=1",
        *FAST_POLL,
    ]
    with running_server(tmp_path / "server.log", args) as server:
        assert server.status("tiny") == {2: ("AVAILABLE", ""), 1: ("AVAILABLE", "")}
        write_config(
            config,
            [
                model_entry("tiny", tiny, "specific { versions: 1 }", {"stable": 1}),
                model_entry("other", other),
            ],
        )
        wait_for(lambda: server.status("tiny").get(2, ("",))[0] == "END", 60, what="v2 END")
        wait_for(lambda: _status_or_none(server, "other") == {1: ("AVAILABLE", "")}, 60)
        request = predict_request("tiny", jpeg(RED), version_label="stable")
        assert server.predict.Predict(request, timeout=30).model_spec.version.value == 1
        write_config(config, [model_entry("tiny", tiny, "specific { versions: 1 }")])
        wait_for(lambda: server.status("other") == {1: ("END", "")}, 60, what="other removed")
        with pytest.raises(grpc.RpcError) as info:
            server.predict.Predict(predict_request("other", jpeg(RED)), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _status_or_none(server: Server, model: str) -> dict[int, tuple[str, str]] | None:
    try:
        return server.status(model)
    except grpc.RpcError:
        return None


def test_reload_config_rpc_adds_a_model_and_enforces_label_availability(
    tmp_path: Path, tiny_repo: Path
) -> None:
    tiny = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    other = copy_versions(tiny_repo, tmp_path / "other", [1])
    config = write_config(tmp_path / "models.config", [model_entry("tiny", tiny)])
    with running_server(tmp_path / "server.log", [f"--model_config_file={config}"]) as server:
        request = model_management_pb2.ReloadConfigRequest()
        labelled = [model_entry("tiny", tiny), model_entry("other", other, labels={"stable": 1})]
        request.config.CopyFrom(read_model_server_config(str(write_config(config, labelled))))
        with pytest.raises(grpc.RpcError) as info:
            server.models.HandleReloadConfigRequest(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == (
            "Request to assign label to version 1 of model other, "
            "which is not currently available for inference"
        )
        plain = [model_entry("tiny", tiny), model_entry("other", other)]
        request.config.CopyFrom(read_model_server_config(str(write_config(config, plain))))
        response = server.models.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0
        assert server.status("other") == {1: ("AVAILABLE", "")}
        assert _version_answering(server, "other") == 1


def test_warmup_runs_before_available(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    args = ["--model_name=tiny", f"--model_base_path={base}"]
    with running_server(tmp_path / "server.log", args) as server:
        log = server.process.log()
    warmed = log.index("Number of warmup records read: 1.")
    assert warmed < log.index("Successfully loaded servable version {name: tiny version: 1}")


def test_version_still_being_written_is_not_loaded(tmp_path: Path, tiny_repo: Path) -> None:
    base = copy_versions(tiny_repo, tmp_path / "tiny", [1])
    args = ["--model_name=tiny", f"--model_base_path={base}", *FAST_POLL]
    with running_server(tmp_path / "server.log", args) as server:
        source, target = tiny_repo / "2", base / "2"
        # Worst order: the graph and small files first, the weights trickling in afterwards.
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("variables.data-*"))
        data = next((source / "variables").glob("variables.data-*"))
        payload = data.read_bytes()
        with (target / "variables" / data.name).open("wb") as out:
            for start in range(0, len(payload), max(1, len(payload) // 6)):
                out.write(payload[start : start + max(1, len(payload) // 6)])
                out.flush()
                time.sleep(0.6)  # a slow download: several polls see the file growing
                assert 2 not in server.status("tiny")
        wait_for(lambda: _version_answering(server, "tiny") == 2, 60, what="v2 serving")
        assert "Loading servable: {name: tiny version: 2} failed" not in server.process.log()
