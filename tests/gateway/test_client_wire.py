"""The Predict request the client writes itself (client.encode_predict_request) is the one the
generated classes would have written: same message for TF Serving's own PredictRequest."""

from __future__ import annotations

import os

import pytest
from tensorflow_serving.apis import predict_pb2 as official_predict

from gateway._proto.dynoserve.tf_serving import predict_pb2
from gateway.client import encode_predict_request, float_tensor, model_spec, string_tensor


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 3 * 1024 * 1024])
def test_encoded_request_parses_as_the_generated_one(size: int) -> None:
    images = [os.urandom(size), b"second image"]
    inputs = {"images": string_tensor(images), "pixels": float_tensor([b"\0" * 12], 1, 1)}
    spec = model_spec("mobilenet", 3, signature_name="serving_default")
    wire = encode_predict_request(spec, inputs)
    expected = predict_pb2.PredictRequest(model_spec=spec, inputs=inputs)
    assert predict_pb2.PredictRequest.FromString(wire) == expected
    official = official_predict.PredictRequest.FromString(wire)
    assert list(official.inputs["images"].string_val) == images
    assert official.model_spec.version.value == 3
    assert len(wire) == expected.ByteSize()


def test_a_label_and_no_inputs_encode_too() -> None:
    spec = model_spec("m", label="canary")
    wire = encode_predict_request(spec, {})
    assert predict_pb2.PredictRequest.FromString(wire) == predict_pb2.PredictRequest(
        model_spec=spec
    )
