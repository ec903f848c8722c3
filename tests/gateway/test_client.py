"""The gRPC client against a real gRPC server on loopback (FakeGrpcModelServer, named so: it
scripts failures the real model server cannot be made to produce on demand; grpcfake.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gateway._proto.dynoserve.tensorflow import types_pb2
from gateway._proto.dynoserve.tf_serving import (
    predict_pb2,
)
from gateway.client import DECODED_OUTPUT, ModelServerClient, decode_outputs, string_tensor
from gateway.errors import (
    GRPC_TO_ERROR,
    DeadlineExceeded,
    InvalidArgument,
    ModelNotReady,
    ModelServerError,
    ServiceUnavailable,
    error_for_grpc,
)
from gateway.topk import top_k
from gateway.versions import VersionResolver
from tests.gateway.grpcfake import FakeGrpcModelServer, serve_fake


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[FakeGrpcModelServer, str]]:
    with serve_fake(FakeGrpcModelServer()) as (servicer, target):
        yield servicer, target


@pytest.fixture
def fake(
    fake_server: tuple[FakeGrpcModelServer, str],
) -> Iterator[tuple[FakeGrpcModelServer, ModelServerClient]]:
    servicer, target = fake_server
    servicer.calls, servicer.failures, servicer.delay = 0, 0, 0.0
    servicer.code = grpc.StatusCode.UNAVAILABLE
    servicer.metadata.clear()
    servicer.unloaded_versions, servicer.latest = set(), 3
    servicer.input_dtype, servicer.input_shape = 7, [-1]
    client = ModelServerClient(target, deadline_s=2.0, max_attempts=3)
    yield servicer, client
    client.close()


def predict(client: ModelServerClient) -> Any:
    return client.predict("m", None, "serving_default", {"images": string_tensor([b"x"])}, "rid-1")


def test_predict_decodes_tensor_content_and_sends_the_request_id(fake: Any) -> None:
    servicer, client = fake
    output, elapsed = predict(client)
    assert output.version == 3
    assert output.scores == [pytest.approx([0.2, 0.5, 0.3])]
    assert output.classes is None
    assert elapsed > 0
    assert servicer.metadata[-1]["x-request-id"] == "rid-1"


def test_unavailable_is_retried_by_the_service_config(fake: Any) -> None:
    servicer, client = fake
    servicer.failures = 2
    output, _ = predict(client)
    assert output.version == 3
    assert servicer.calls == 3


def test_retries_are_bounded(fake: Any) -> None:
    servicer, client = fake
    servicer.failures = 10
    with pytest.raises(ServiceUnavailable):
        predict(client)
    assert servicer.calls == 3


def test_other_codes_are_not_retried(fake: Any) -> None:
    servicer, client = fake
    servicer.failures, servicer.code = 1, grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgument):
        predict(client)
    assert servicer.calls == 1


def test_deadline(fake: Any, fake_server: tuple[FakeGrpcModelServer, str]) -> None:
    servicer, _ = fake
    servicer.delay = 0.5
    client = ModelServerClient(fake_server[1], deadline_s=0.1)
    with pytest.raises(DeadlineExceeded):
        predict(client)
    client.close()


def test_metadata_cache_pins_versions_and_refreshes_aliases(fake: Any) -> None:
    servicer, client = fake
    resolver = VersionResolver(client)
    assert resolver.resolve("m", None, None).version == 3
    assert resolver.resolve("m", None, None).version == 3
    assert resolver.resolve("m", 3, None).version == 3
    assert servicer.calls == 1  # latest resolved once, then version 3 served from the cache
    resolver.forget("m")
    resolver.resolve("m", None, None)
    assert servicer.calls == 2


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.FAILED_PRECONDITION, 503),
        (grpc.StatusCode.INTERNAL, 502),
        (grpc.StatusCode.UNKNOWN, 502),
        (grpc.StatusCode.UNIMPLEMENTED, 502),
        (grpc.StatusCode.PERMISSION_DENIED, 502),
    ],
)
def test_grpc_to_http_table(code: grpc.StatusCode, status: int) -> None:
    assert error_for_grpc(code, "x").status == status


def test_table_covers_every_failure_code() -> None:
    failures = set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert set(GRPC_TO_ERROR) == failures
    assert all(error_for_grpc(c, "").status != 500 for c in failures)


def test_decode_outputs_with_classes_and_batches() -> None:
    response = predict_pb2.PredictResponse()
    probs = response.outputs["probabilities"]
    probs.dtype = 1
    probs.tensor_shape.dim.add(size=2)
    probs.tensor_shape.dim.add(size=2)
    probs.float_val.extend([0.9, 0.1, 0.4, 0.6])
    classes = response.outputs["classes"]
    classes.dtype = 7
    classes.tensor_shape.dim.add(size=2)
    classes.tensor_shape.dim.add(size=2)
    classes.string_val.extend([b"a", b"b", b"a", b"b"])
    output = decode_outputs(response)
    assert output.scores == [pytest.approx([0.9, 0.1]), pytest.approx([0.4, 0.6])]
    assert output.classes == [["a", "b"], ["a", "b"]]


def scores_response(rows: int) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    probs = response.outputs["probabilities"]
    probs.dtype = types_pb2.DT_FLOAT
    probs.tensor_shape.dim.add(size=rows)
    probs.tensor_shape.dim.add(size=2)
    probs.float_val.extend([0.9, 0.1] * rows)
    return response


@pytest.mark.parametrize("packed", [False, True])
def test_decode_outputs_reads_decoded_in_both_encodings(packed: bool) -> None:
    response = scores_response(3)
    decoded = response.outputs[DECODED_OUTPUT]
    decoded.dtype = types_pb2.DT_BOOL
    decoded.tensor_shape.dim.add(size=3)
    if packed:
        decoded.tensor_content = bytes([1, 0, 1])  # one byte per DT_BOOL, as TF packs it
    else:
        decoded.bool_val.extend([True, False, True])
    assert decode_outputs(response).decoded == [True, False, True]


def test_decode_outputs_without_decoded_or_of_another_dtype() -> None:
    response = scores_response(2)
    assert decode_outputs(response).decoded is None
    other = response.outputs[DECODED_OUTPUT]
    other.dtype = types_pb2.DT_INT32
    other.int_val.extend([1, 0])
    assert decode_outputs(response).decoded is None


@pytest.mark.parametrize("values", [[True], [True, False, True]])
def test_decoded_must_have_a_value_per_row(values: list[bool]) -> None:
    response = scores_response(2)
    decoded = response.outputs[DECODED_OUTPUT]
    decoded.dtype = types_pb2.DT_BOOL
    decoded.bool_val.extend(values)
    with pytest.raises(ModelServerError, match=f"{len(values)} 'decoded' values for 2 rows"):
        decode_outputs(response)


def test_decode_outputs_without_scores() -> None:
    with pytest.raises(ModelServerError):
        decode_outputs(predict_pb2.PredictResponse())


def test_top_k_orders_and_breaks_ties_by_class() -> None:
    ranked = top_k([0.1, 0.4, 0.4, 0.1], ["a", "b", "c", "d"], 3)
    assert [(s.label, s.class_id) for s in ranked] == [("b", 1), ("c", 2), ("a", 0)]
    assert [s.label for s in top_k([0.3, 0.7], None, 5)] == ["1", "0"]


def test_a_rollout_between_metadata_and_predict_is_retried_once(fake: Any) -> None:
    from gateway.interface import ImageInput, PredictRequest
    from gateway.predictor import ModelServerPredictor
    from gateway.settings import Settings
    from tests.imagehost import image_bytes

    servicer, client = fake
    # The answer cache off: it would answer the same image again from version 3, served a
    # moment ago, without the Predict this test is about.
    predictor = ModelServerPredictor(Settings(answer_cache_bytes=0), client=client)
    request = PredictRequest("m", (ImageInput(data=image_bytes("PNG")),))
    assert predictor.predict(request).version == 3
    servicer.latest, servicer.unloaded_versions = 4, {3}  # v4 loaded, v3 unloaded
    result = predictor.predict(request)  # the resolver's cache still says latest is 3
    assert result.version == 4
    assert result.items[0].predictions is not None
    pinned = PredictRequest("m", request.images, version=3)
    with pytest.raises(ModelNotReady):
        predictor.predict(pinned)


# --- the gateway never sends a tensor the signature does not take (issue 13) ------------------


def _predict_images(client: ModelServerClient, model: str, count: int) -> Any:
    from gateway.interface import ImageInput, PredictRequest
    from gateway.predictor import ModelServerPredictor
    from gateway.settings import Settings
    from tests.imagehost import image_bytes

    predictor = ModelServerPredictor(Settings(), client=client)
    images = tuple(ImageInput(data=image_bytes("PNG")) for _ in range(count))
    return predictor.predict(PredictRequest(model, images))


@pytest.mark.parametrize(
    ("dtype", "shape", "count", "code"),
    [
        (7, [1], 2, "batch_size_mismatch"),  # fixed batch of 1, two images
        (1, [2, 32, 32, 3], 1, "batch_size_mismatch"),  # fixed batch of 2, one image
        (7, [], 1, "unsupported_model"),  # a scalar string: the gateway sends [N]
        (7, [-1, 1], 1, "unsupported_model"),  # rank 2 strings
        (1, [-1, 32, 32], 1, "unsupported_model"),  # rank-3 floats
        (3, [-1, 32, 32, 3], 1, "unsupported_model"),  # DT_INT32 pixels
    ],
)
def test_a_tensor_that_disagrees_with_the_signature_is_never_sent(
    fake: Any, dtype: int, shape: list[int], count: int, code: str
) -> None:
    from gateway.errors import GatewayError

    servicer, client = fake
    servicer.input_dtype, servicer.input_shape = dtype, shape
    model = f"mismatch-{dtype}-{len(shape)}-{count}"
    with pytest.raises(GatewayError) as info:
        _predict_images(client, model, count)
    assert info.value.code == code, info.value.message
    assert info.value.status == (400 if code == "batch_size_mismatch" else 502)
    assert [m for m, _ in servicer.predicted if m == model] == []


@pytest.mark.parametrize(("dtype", "shape"), [(7, [-1]), (7, [2]), (1, [2, 32, 32, 3])])
def test_a_tensor_that_fits_the_signature_is_sent(fake: Any, dtype: int, shape: list[int]) -> None:
    servicer, client = fake
    servicer.input_dtype, servicer.input_shape = dtype, shape
    model = f"fits-{dtype}-{len(shape)}-{shape[0]}"
    result = _predict_images(client, model, 2)
    assert [item.predictions is not None for item in result.items] == [True, True]
    sent = [dims for m, dims in servicer.predicted if m == model]
    assert sent == ([[2]] if dtype == 7 else [[2, 32, 32, 3]])
