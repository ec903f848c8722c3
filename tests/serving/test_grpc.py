"""gRPC conformance with the official tensorflow-serving-api stubs, against a real server."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
)

from tests.serving.helpers import GREEN, RED, Server, jpeg, predict_request

pytestmark = pytest.mark.slow


def _error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_predict_latest_answers_with_version_and_both_outputs(shared_server: Server) -> None:
    response = shared_server.predict.Predict(predict_request("other", jpeg(RED)), timeout=30)
    assert response.model_spec.name == "other"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    classes = tf.make_ndarray(response.outputs["classes"])
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (1, 3)
    assert classes[0][int(np.argmax(probabilities[0]))] == b"cat"
    # TF Serving fills the typed repeated fields (AsProtoField), not tensor_content.
    assert response.outputs["probabilities"].float_val
    assert not response.outputs["probabilities"].tensor_content


def test_predict_pins_version_and_label(shared_server: Server) -> None:
    for spec, expected in (({"version": 1}, 1), ({"version_label": "canary"}, 2), ({}, 2)):
        request = predict_request("tiny", jpeg(GREEN), **spec)
        assert (
            shared_server.predict.Predict(request, timeout=30).model_spec.version.value == expected
        )


def test_predict_output_filter_and_pixel_signature(shared_server: Server) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "predict_pixels"
    pixels = np.zeros((2, 32, 32, 3), np.float32)
    pixels[0, ..., 0] = 255
    pixels[1, ..., 1] = 255
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels))
    request.output_filter.append("classes")
    response = shared_server.predict.Predict(request, timeout=30)
    assert list(response.outputs) == ["classes"]
    assert response.model_spec.signature_name == "predict_pixels"


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        (
            {"name": "nope"},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            {"name": "tiny", "version": 9},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(tiny, 9)",
        ),
        (
            {"name": "tiny", "version_label": "gold"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: gold",
        ),
        (
            {"name": "tiny", "signature_name": "nope"},
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
    ],
)
def test_predict_errors_match_tf_serving(
    shared_server: Server, spec: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    name = str(spec.pop("name"))
    error = _error(lambda: shared_server.predict.Predict(predict_request(name, b"x", **spec)))
    assert error.code() == code
    assert error.details() == message


def test_predict_input_errors_are_invalid_argument(shared_server: Server) -> None:
    missing = predict_pb2.PredictRequest()
    missing.model_spec.name = "tiny"
    error = _error(lambda: shared_server.predict.Predict(missing, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("input size does not match signature: 0!=1")
    assert "Missing but required: {images}." in error.details()

    mistyped = predict_pb2.PredictRequest()
    mistyped.model_spec.name = "tiny"
    mistyped.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
    error = _error(lambda: shared_server.predict.Predict(mistyped, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expects arg[0] to be string but float is provided"

    extra = predict_request("tiny", jpeg(RED))
    extra.inputs["other"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
    error = _error(lambda: shared_server.predict.Predict(extra, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sent extra: {other}" in error.details()

    bad_filter = predict_request("tiny", jpeg(RED))
    bad_filter.output_filter.append("logits")
    error = _error(lambda: shared_server.predict.Predict(bad_filter, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("output tensor alias not found in signature: logits")


def test_an_undecodable_image_is_reported_in_its_row(shared_server: Server) -> None:
    """The export's graph flags an image it cannot decode (`decoded`) instead of failing the
    run, so the request, and any batch it shares, still answers."""
    response = shared_server.predict.Predict(predict_request("tiny", b"not an image"), timeout=30)
    assert tf.make_ndarray(response.outputs["decoded"]).tolist() == [False]
    request = predict_request("tiny", jpeg(RED))
    request.inputs["images"].CopyFrom(
        tf.make_tensor_proto([jpeg(RED), b"not an image", jpeg(RED)[:100]], dtype=tf.string)
    )
    response = shared_server.predict.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["decoded"]).tolist() == [True, False, False]
    assert tf.make_ndarray(response.outputs["classes"])[0][0] == b"cat"


def test_get_model_metadata_returns_signature_defs(shared_server: Server) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tiny"
    request.model_spec.version_label = "stable"
    request.metadata_field.append("signature_def")
    response = shared_server.predict.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    serving_default = signatures.signature_def["serving_default"]
    assert serving_default.method_name == "tensorflow/serving/predict"
    assert serving_default.inputs["images"].dtype == tf.string.as_datatype_enum
    assert set(serving_default.outputs) == {"classes", "decoded", "probabilities"}
    assert "predict_pixels" in signatures.signature_def

    request.ClearField("metadata_field")
    request.metadata_field.append("labels")
    error = _error(lambda: shared_server.predict.GetModelMetadata(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Metadata field labels is not supported"


def test_get_model_status_lists_versions_newest_first(shared_server: Server) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tiny"
    response = shared_server.models.GetModelStatus(request, timeout=10)
    assert [s.version for s in response.model_version_status] == [2, 1]
    assert {s.state for s in response.model_version_status} == {
        get_model_status_pb2.ModelVersionStatus.AVAILABLE
    }
    assert all(s.status.error_code == 0 for s in response.model_version_status)

    request.model_spec.version.value = 7
    error = _error(lambda: shared_server.models.GetModelStatus(request, timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Could not find version 7 of model tiny"

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    error = _error(lambda: shared_server.models.GetModelStatus(request, timeout=10))
    assert error.details() == "Could not find any versions of model nope"


def test_reload_config_rejects_what_tf_serving_rejects(shared_server: Server) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    entry = request.config.model_config_list.config.add()
    entry.name = "relative"
    entry.base_path = "models/relative"
    entry.model_platform = "tensorflow"
    error = _error(lambda: shared_server.models.HandleReloadConfigRequest(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to have an absolute path or URI" in error.details()

    empty = model_management_pb2.ReloadConfigRequest()
    error = _error(lambda: shared_server.models.HandleReloadConfigRequest(empty, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in error.details()


def _pixels_request(tensor: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "predict_pixels"
    request.inputs["pixels"].CopyFrom(tensor)
    return request


def _still_serving(server: Server) -> None:
    response = server.predict.Predict(predict_request("tiny", jpeg(RED)), timeout=30)
    assert response.outputs["classes"].string_val


@pytest.mark.parametrize(
    ("shape", "got"),
    [
        ((1, 5, 3), "[1,5,3]"),  # the rank that made oneDNN's convolution abort the process
        ((1, 32, 32, 4), "[1,32,32,4]"),
        ((2, 16, 32, 3), "[2,16,32,3]"),
        ((1, 32, 32, 3, 1), "[1,32,32,3,1]"),
        ((), "[]"),
    ],
)
def test_wrong_shape_is_invalid_argument(
    shared_server: Server, shape: tuple[int, ...], got: str
) -> None:
    request = _pixels_request(tf.make_tensor_proto(np.zeros(shape, np.float32)))
    error = _error(lambda: shared_server.predict.Predict(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"input tensor shape does not match signature: pixels has shape {got} "
        "but the signature expects [?,32,32,3]"
    )
    _still_serving(shared_server)


def test_inconsistent_tensors_are_parsing_errors(shared_server: Server) -> None:
    short = tf.make_tensor_proto(np.zeros((1, 32, 32, 3), np.float32))
    short.tensor_content = short.tensor_content[:-4]
    negative = tf.make_tensor_proto(np.zeros((1, 32, 32, 3), np.float32))
    negative.tensor_shape.dim[0].size = -1
    unknown = tf.make_tensor_proto(np.zeros((1, 32, 32, 3), np.float32))
    unknown.dtype = 999
    for tensor in (short, negative, unknown):
        error = _error(lambda t=tensor: shared_server.predict.Predict(_pixels_request(t)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "tensor parsing error: pixels"
    _still_serving(shared_server)


def test_huge_declared_size_is_refused_before_allocating(shared_server: Server) -> None:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)  # TF repeats the last value
    for size in (10**8, 32, 32, 3):
        tensor.tensor_shape.dim.add().size = size
    tensor.float_val.append(1.0)
    error = _error(lambda: shared_server.predict.Predict(_pixels_request(tensor), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "tensor pixels of shape [100000000,32,32,3] would take 1228800000000 bytes but carries "
        "1 values; at most 67108864 bytes are accepted"
    )
    _still_serving(shared_server)


def test_fewer_values_than_elements_repeat_the_last_as_tf_does(shared_server: Server) -> None:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (2, 32, 32, 3):
        tensor.tensor_shape.dim.add().size = size
    tensor.float_val.append(255.0)  # every pixel white, both images
    response = shared_server.predict.Predict(_pixels_request(tensor), timeout=30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)


def test_empty_batch_answers_empty_results(shared_server: Server) -> None:
    request = _pixels_request(tf.make_tensor_proto(np.zeros((0, 32, 32, 3), np.float32)))
    response = shared_server.predict.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (0, 3)
    images = predict_request("tiny", b"")
    images.inputs["images"].ClearField("string_val")
    images.inputs["images"].tensor_shape.dim[0].size = 0
    response = shared_server.predict.Predict(images, timeout=30)
    assert tf.make_ndarray(response.outputs["classes"]).shape == (0, 3)


def test_empty_model_name_is_invalid_argument(shared_server: Server) -> None:
    """Difference 1 (server_core.cc ServableRequestFromModelSpec): not NOT_FOUND."""
    error = _error(lambda: shared_server.predict.Predict(predict_request("", jpeg(RED))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "ModelSpec has no name specified."
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = ""
    metadata.metadata_field.append("signature_def")
    error = _error(lambda: shared_server.predict.GetModelMetadata(metadata, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "ModelSpec has no name specified."
