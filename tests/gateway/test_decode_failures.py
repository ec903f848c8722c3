"""Models that report each image's failed decode (a DT_BOOL `decoded` output): the gateway vets
their images by the header alone, a row the model could not decode becomes that image's 422
and is never ranked nor cached. Ranking and the cache alone, then a real app against a real
gRPC server (the scripted fake, which decodes each image with Pillow to fill `decoded`, as
the re-exported graph does in TensorFlow) with images from the real loopback image host."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway._proto.dynoserve.tensorflow import types_pb2
from gateway._proto.dynoserve.tf_serving import get_model_metadata_pb2
from gateway.answercache import AnswerCache, Recall, digest
from gateway.client import DECODED_OUTPUT, PredictOutput
from gateway.errors import UndecodableImage
from gateway.interface import ItemResult
from gateway.metrics import Metrics
from gateway.topk import rank
from tests.gateway.grpcfake import FakeGrpcModelServer, serve_fake
from tests.gateway.test_answer_cache import make_app
from tests.imagehost import ImageServer, image_bytes

# --- ranking and the answer cache alone -------------------------------------------------------

ROWS = [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]


def test_a_row_the_model_could_not_decode_is_that_images_422() -> None:
    items = [ItemResult(), ItemResult(error=UndecodableImage("gateway's own")), ItemResult()]
    items.append(ItemResult())
    output = PredictOutput(3, ROWS, [["a", "b"]] * 3, decoded=[True, False, True])
    rank(output, [0, 2, 3], items, k=1)
    assert [s.label for s in items[0].predictions or []] == ["b"]
    assert isinstance(items[1].error, UndecodableImage)
    assert items[1].error.message == "gateway's own"
    failed = items[2].error
    assert items[2].predictions is None
    assert isinstance(failed, UndecodableImage)
    assert (failed.status, failed.code) == (422, "undecodable_image")
    assert "model server could not decode" in failed.message
    assert "corrupt or truncated" in failed.message
    assert [s.label for s in items[3].predictions or []] == ["b"]


def test_without_decoded_every_row_is_ranked() -> None:
    items = [ItemResult() for _ in ROWS]
    rank(PredictOutput(3, ROWS, None), [0, 1, 2], items, k=2)
    assert [item.error for item in items] == [None, None, None]
    assert [len(item.predictions or []) for item in items] == [2, 2, 2]


def test_the_answer_cache_never_keeps_a_row_that_did_not_decode() -> None:
    cache = AnswerCache(1024 * 1024)
    recall = Recall(cache, "m", 3, "serving_default")
    images = [b"good", b"corrupt", b"also good"]
    items = [ItemResult(digest=digest(image)) for image in images]
    output = PredictOutput(3, ROWS, None, decoded=[True, False, True])
    rank(output, [0, 1, 2], items, k=2)
    recall.keep(items, [0, 1, 2], output)
    assert [recall(digest(image)) for image in images] == [True, False, True]
    assert len(cache._entries) == 2


# --- a real app against a real gRPC server (the scripted fake) --------------------------------


def noisy(fmt: str, size: tuple[int, int] = (48, 48)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 80).convert("RGB").save(out, format=fmt)
    return out.getvalue()


GOOD = image_bytes("JPEG", size=(24, 24), color="#0a0b0c")
JPEG = noisy("JPEG")
CUT_JPEG = JPEG[: len(JPEG) // 2]
PNG = noisy("PNG")
CUT_PNG = PNG[: len(PNG) // 2]


class DecodingFake(FakeGrpcModelServer):
    """The fake with a signature that declares `decoded` (or not: `decoded_output` False, the
    models exported before it), answered by decoding each image whole with Pillow."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded_output = True
        self.answer_decoded = True  # False: the answer leaves `decoded` out (a broken server)
        self.packed = False  # `decoded` as tensor_content rather than bool_val

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        response = super().GetModelMetadata(request, context)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigs)
        outputs = sigs.signature_def["serving_default"].outputs
        probabilities = outputs["probabilities"]
        probabilities.dtype = types_pb2.DT_FLOAT
        for size in (-1, 3):
            probabilities.tensor_shape.dim.add(size=size)
        if self.decoded_output:
            outputs[DECODED_OUTPUT].dtype = types_pb2.DT_BOOL
            outputs[DECODED_OUTPUT].tensor_shape.dim.add(size=-1)
        response.metadata["signature_def"].Pack(sigs)
        return response

    def Predict(self, request: Any, context: Any) -> Any:
        response = super().Predict(request, context)
        if self.decoded_output and self.answer_decoded:
            images = next(iter(request.inputs.values())).string_val
            decoded = response.outputs[DECODED_OUTPUT]
            decoded.dtype = types_pb2.DT_BOOL
            decoded.tensor_shape.dim.add(size=len(images))
            values = [_decodes(image) for image in images]
            if self.packed:
                decoded.tensor_content = bytes(values)
            else:
                decoded.bool_val.extend(values)
        return response


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


@pytest.fixture
def fake() -> Iterator[tuple[DecodingFake, str]]:
    with serve_fake(DecodingFake()) as running:
        yield running


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predicted_images(server: DecodingFake) -> int:
    return sum(dims[0] for _, dims in server.predicted)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cut", [CUT_JPEG, CUT_PNG], ids=["jpeg", "png"])
def test_a_truncated_image_is_judged_by_the_model_and_answered_as_before(
    tmp_path: Path, fake: tuple[DecodingFake, str], cut: bytes, packed: bool
) -> None:
    """Same status, code, body shape, headers and request metric as the gateway's own
    corrupt-image error (the model without `decoded`); only the message says who decoded."""
    server, target = fake
    server.packed = packed
    client, metrics = make_app(target, tmp_path)
    tolerant = client.post("/v1/models/m:predict", json={"image_b64": b64(cut)})
    assert predicted_images(server) == 1  # header-only here: the model server judged it
    server.decoded_output = False
    plain_client, plain_metrics = make_app(target, tmp_path)
    plain = plain_client.post("/v1/models/m:predict", json={"image_b64": b64(cut)})
    assert predicted_images(server) == 1  # decoded here, refused before any Predict
    for answer in (tolerant, plain):
        assert answer.status_code == 422
        assert answer.get_json()["error"]["code"] == "undecodable_image"
        assert set(answer.get_json()) == {"error"}
        assert set(answer.get_json()["error"]) == {"code", "message"}
    assert "model server could not decode" in tolerant.get_json()["error"]["message"]
    assert "corrupt or truncated" in plain.get_json()["error"]["message"]
    assert _header_names(tolerant) == _header_names(plain)
    assert _requests(metrics) == _requests(plain_metrics) == {("m", "", "422"): 1.0}


def _header_names(answer: Any) -> set[str]:
    return {name.lower() for name, _ in answer.headers}


def _requests(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["model"], s.labels["version"], s.labels["status"]): s.value
        for family in metrics.registry.collect()
        if family.name == "dynoserve_gateway_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_the_other_routes_answer_it_as_before(
    tmp_path: Path, fake: tuple[DecodingFake, str], image_server: ImageServer
) -> None:
    """/predict (by URL) and /v2 (one failed image fails its request: the protocol has no
    per-image errors) both answer 422 after the model server judged the image."""
    server, target = fake
    client, _ = make_app(target, tmp_path)
    url = image_server.add_bytes("/decode-failures/cut.jpg", CUT_JPEG)
    legacy = client.post("/predict", json={"image_url": url, "model": "m"})
    assert (legacy.status_code, legacy.get_json()["error"]["code"]) == (422, "undecodable_image")
    tensor = {"name": "images", "datatype": "BYTES", "shape": [2]}
    tensor["data"] = ["data:image/jpeg;base64," + b64(image) for image in (GOOD, CUT_JPEG)]
    v2 = client.post("/v2/models/m/infer", json={"inputs": [tensor]})
    assert v2.status_code == 422, v2.get_json()
    assert "model server could not decode" in v2.get_json()["error"]
    assert predicted_images(server) == 1 + 2


def test_v2_metadata_lists_only_the_outputs_infer_answers_with(
    tmp_path: Path, fake: tuple[DecodingFake, str]
) -> None:
    """`decoded` is the gateway's to read: infer refuses it, so the metadata does not offer it
    (tritonclient users ask for the outputs the metadata lists)."""
    _, target = fake
    client, _ = make_app(target, tmp_path)
    model = client.get("/v2/models/m").get_json()
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1]}
    tensor["data"] = ["data:image/jpeg;base64," + b64(GOOD)]
    asked = client.post(
        "/v2/models/m/infer", json={"inputs": [tensor], "outputs": [{"name": DECODED_OUTPUT}]}
    )
    assert asked.status_code == 400, asked.get_json()


def test_a_batch_keeps_its_good_rows_and_caches_only_them(
    tmp_path: Path, fake: tuple[DecodingFake, str]
) -> None:
    server, target = fake
    client, _ = make_app(target, tmp_path)
    body = {"images": [{"image_b64": b64(GOOD)}, {"image_b64": b64(CUT_PNG)}]}
    first = client.post("/v1/models/m:predict", json=body)
    assert first.status_code == 200, first.get_json()
    good, failed = first.get_json()["results"]
    assert [p["label"] for p in good["predictions"]] == ["1", "2", "0"]
    assert (failed["status"], failed["error"]["code"]) == (422, "undecodable_image")
    assert "predictions" not in failed
    assert first.headers["Dynoserve-Cache"] == "miss"
    again = client.post("/v1/models/m:predict", json=body)
    assert again.get_json()["results"] == first.get_json()["results"]
    assert again.headers["Dynoserve-Cache"] == "hit"  # of the answered images, all from cache
    assert server.predicted[-1] == ("m", [1])  # the failed image went again, the good one not
    assert predicted_images(server) == 2 + 1


def test_what_the_gateway_re_encodes_is_still_vetted_here(
    tmp_path: Path, fake: tuple[DecodingFake, str]
) -> None:
    server, target = fake
    client, _ = make_app(target, tmp_path)
    bmp = noisy("BMP")
    answer = client.post("/v1/models/m:predict", json={"image_b64": b64(bmp[: len(bmp) // 2])})
    assert answer.status_code == 422
    assert "model server" not in answer.get_json()["error"]["message"]
    assert server.predicted == []


def test_an_answer_without_decoded_from_a_tolerant_signature_is_502(
    tmp_path: Path, fake: tuple[DecodingFake, str]
) -> None:
    """Its images were vetted by their header alone: no row of that answer can be trusted."""
    server, target = fake
    server.answer_decoded = False
    client, _ = make_app(target, tmp_path)
    answer = client.post("/v1/models/m:predict", json={"image_b64": b64(GOOD)})
    assert answer.status_code == 502
    assert answer.get_json()["error"]["code"] == "model_server_error"
    assert "'decoded'" in answer.get_json()["error"]["message"]
