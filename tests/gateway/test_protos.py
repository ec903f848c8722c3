"""The gateway's generated TF Serving classes are byte-compatible with the official ones, and
the gateway's environment does without TensorFlow.

Both sets of classes live in one process here: ours register in a private descriptor pool
(see gateway/protogen.py), which this module also proves.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    prediction_service_pb2,
)
from tensorflow_serving.apis import predict_pb2 as official_predict

from gateway._proto.dynoserve.tensorflow import tensor_pb2 as our_tensor
from gateway._proto.dynoserve.tf_serving import (
    get_model_metadata_pb2 as our_meta,
)
from gateway._proto.dynoserve.tf_serving import (
    get_model_status_pb2 as our_status,
)
from gateway._proto.dynoserve.tf_serving import (
    predict_pb2 as our_predict,
)
from gateway._proto.dynoserve.tf_serving import (
    services_pb2,
)
from tests.support import GATEWAY_PYTHON, python_env


def official_predict_request() -> Any:
    request = official_predict.PredictRequest()
    request.model_spec.name = "shapes"
    request.model_spec.version.value = 3
    request.model_spec.signature_name = "serving_default"
    images = request.inputs["images"]
    images.dtype = types_pb2.DT_STRING
    images.tensor_shape.dim.add(size=2)
    images.string_val.extend([b"\xff\xd8\xffjpeg", b"\x89PNG"])
    pixels = request.inputs["pixels"]
    pixels.dtype = types_pb2.DT_FLOAT
    for size in (1, 2, 2, 3):
        pixels.tensor_shape.dim.add(size=size)
    pixels.tensor_content = bytes(range(48))
    request.output_filter.append("probabilities")
    return request


def official_predict_response() -> Any:
    response = official_predict.PredictResponse()
    response.model_spec.name = "shapes"
    response.model_spec.version.value = 7
    probs = response.outputs["probabilities"]
    probs.dtype = types_pb2.DT_FLOAT
    probs.tensor_shape.dim.add(size=1)
    probs.tensor_shape.dim.add(size=3)
    probs.float_val.extend([0.5, 0.25, 0.25])
    classes = response.outputs["classes"]
    classes.dtype = types_pb2.DT_STRING
    classes.tensor_shape.dim.add(size=1)
    classes.tensor_shape.dim.add(size=3)
    classes.string_val.extend([b"cat", b"dog", b"bird"])
    return response


def official_metadata_response() -> Any:
    sigs = get_model_metadata_pb2.SignatureDefMap()
    sig = sigs.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["images"].name = "serving_default_images:0"
    sig.inputs["images"].dtype = types_pb2.DT_STRING
    sig.inputs["images"].tensor_shape.dim.add(size=-1)
    sig.outputs["probabilities"].dtype = types_pb2.DT_FLOAT
    sig.outputs["probabilities"].tensor_shape.dim.add(size=-1)
    sig.outputs["probabilities"].tensor_shape.dim.add(size=3)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "shapes"
    response.model_spec.version.value = 2
    response.metadata["signature_def"].Pack(sigs)
    return response


def official_status_response() -> Any:
    response = get_model_status_pb2.GetModelStatusResponse()
    ok = response.model_version_status.add(version=2, state=30)
    ok.status.error_code = 0
    failed = response.model_version_status.add(version=1, state=50)
    failed.status.error_code = 3
    failed.status.error_message = "bad servable"
    return response


CASES = [
    (official_predict_request, our_predict.PredictRequest),
    (official_predict_response, our_predict.PredictResponse),
    (official_metadata_response, our_meta.GetModelMetadataResponse),
    (official_status_response, our_status.GetModelStatusResponse),
]


@pytest.mark.parametrize(("build", "ours"), CASES)
def test_official_to_ours_and_back_is_byte_identical(build: Any, ours: Any) -> None:
    official = build()
    wire = official.SerializeToString(deterministic=True)
    parsed = ours.FromString(wire)
    assert parsed.SerializeToString(deterministic=True) == wire
    assert type(official).FromString(parsed.SerializeToString()) == official


def test_ours_to_official_with_fields_set_by_the_gateway() -> None:
    from gateway.client import float_tensor, model_spec, string_tensor

    request = our_predict.PredictRequest(model_spec=model_spec("m", 4, signature_name="sig"))
    request.inputs["images"].CopyFrom(string_tensor([b"a", b"bc"]))
    request.inputs["pixels"].CopyFrom(float_tensor([b"\0" * 12], 1, 1))
    wire = request.SerializeToString(deterministic=True)
    official = official_predict.PredictRequest.FromString(wire)
    assert official.model_spec.version.value == 4
    assert official.model_spec.signature_name == "sig"
    assert list(official.inputs["images"].string_val) == [b"a", b"bc"]
    assert official.inputs["images"].dtype == types_pb2.DT_STRING
    assert [d.size for d in official.inputs["pixels"].tensor_shape.dim] == [1, 1, 1, 3]
    assert official.SerializeToString(deterministic=True) == wire
    labelled = our_predict.PredictRequest(model_spec=model_spec("m", label="canary"))
    parsed = official_predict.PredictRequest.FromString(labelled.SerializeToString())
    assert parsed.model_spec.version_label == "canary"
    assert not parsed.model_spec.HasField("version")


def test_fields_we_omit_survive_a_round_trip_as_unknown_fields() -> None:
    official = official_predict_request()
    official.request_options.client_id = b"x"
    official.inputs["images"].variant_val.add().type_name = "v"
    official.inputs["images"].resource_handle_val.add().device = "cpu"
    wire = official.SerializeToString()
    ours = our_predict.PredictRequest.FromString(wire)
    assert official_predict.PredictRequest.FromString(ours.SerializeToString()) == official


def test_any_type_url_matches_the_official_name() -> None:
    response = our_meta.GetModelMetadataResponse()
    response.metadata["signature_def"].Pack(our_meta.SignatureDefMap())
    official = get_model_metadata_pb2.GetModelMetadataResponse.FromString(
        response.SerializeToString()
    )
    unpacked = get_model_metadata_pb2.SignatureDefMap()
    assert official.metadata["signature_def"].Unpack(unpacked)


def test_grpc_method_paths_match() -> None:
    ours = {
        m.full_name for s in services_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods
    }
    official = {
        m.full_name
        for module in (prediction_service_pb2, model_service_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    assert ours == {
        "tensorflow.serving.PredictionService.Predict",
        "tensorflow.serving.PredictionService.GetModelMetadata",
        "tensorflow.serving.ModelService.GetModelStatus",
    }
    assert ours <= official


def test_tensor_proto_field_numbers_match() -> None:
    ours = {f.name: f.number for f in our_tensor.TensorProto.DESCRIPTOR.fields}
    official = {f.name: f.number for f in tensor_pb2.TensorProto.DESCRIPTOR.fields}
    assert ours.items() <= official.items()


def _gateway_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GATEWAY_PYTHON), "-c", code],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=60,
        check=False,
    )


def test_gateway_venv_has_no_tensorflow() -> None:
    for module in ("tensorflow", "tensorflow_serving", "numpy"):
        result = _gateway_python(f"import {module}")
        assert result.returncode != 0
        assert "ModuleNotFoundError" in result.stderr


def test_importing_the_gateway_loads_no_tensorflow() -> None:
    code = (
        "import sys, gateway.app, gateway.server, gateway.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_serving', 'keras', 'numpy'))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(bad, hwm.split()[1])\n"
    )
    result = _gateway_python(code)
    assert result.returncode == 0, result.stderr
    loaded, rss_kb = result.stdout.rsplit(" ", 1)
    assert loaded == "[]"
    assert int(rss_kb) < 80 * 1024, f"gateway import peaks at {int(rss_kb) // 1024} MB"


def test_protogen_output_stays_inside_the_package(tmp_path: Any) -> None:
    from gateway.protogen import proto_files

    # grpc_tools' protoc and TensorFlow's protobuf runtime crash when they share a process.
    out = tmp_path / "_proto"
    code = (
        "import sys, pathlib; from gateway.protogen import generate; "
        "generate(pathlib.Path(sys.argv[1]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out)], check=True, env=python_env(), timeout=120
    )
    modules = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_pb2.py"))
    assert len(modules) == len(proto_files())
    for module in out.rglob("*.py"):
        text = module.read_text()
        assert "from dynoserve" not in text, module
        assert "_descriptor_pool.Default()" not in text, module
    assert (out / "__init__.py").exists()
    assert (out / "dynoserve" / "tf_serving" / "__init__.py").exists()
    assert not (tmp_path / "_proto.staging").exists()
