"""The /v2 routes over the gateway's hooks, with FakePredictor (named so) as the model: the
protocol's error shape with the gateway's statuses and headers, API keys with public probes,
limits, outputs selection and the binary framing. Real-stack tests: test_v2_tritonclient.py."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import ModelNotReady
from tests.gateway.conftest import FakePredictor
from tests.imagehost import image_bytes

PNG = image_bytes("PNG", (8, 8), "red")
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def images(count: int = 1, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "images", "datatype": "BYTES", "shape": [count], "data": [DATA_URL] * count}
    return {"inputs": [tensor], **extra}


def pixels(shape: list[int]) -> dict[str, Any]:
    count = 1
    for d in shape:
        count *= d
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": shape, "data": [1] * count}]}


def test_server_and_model_routes(client: Any) -> None:
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}
    assert client.get("/v2").get_json()["extensions"] == ["binary_tensor_data", "classification"]
    model = client.get("/v2/models/shapes/versions/1").get_json()
    assert model["platform"] == "tensorflow_savedmodel"
    assert [i["name"] for i in model["inputs"]] == ["images", "pixels"]
    assert client.get("/v2/models/shapes/versions/stable/ready").get_json() == {
        "name": "shapes",
        "ready": True,
    }
    not_there = client.get("/v2/models/shapes/versions/9/ready")
    assert not_there.status_code == 503
    assert not_there.get_json() == {"name": "shapes", "ready": False}


def test_errors_are_the_protocols_shape_with_the_gateways_status(
    client: Any, fake_predictor: FakePredictor
) -> None:
    unknown = client.get("/v2/models/nope")
    assert unknown.status_code == 404
    assert unknown.get_json() == {"error": "no model named 'nope'"}
    assert client.get("/v2/models/shapes/versions/-1").status_code == 400
    assert client.get("/v2/models/shapes/versions/canary/ready").status_code == 404
    fake_predictor.fail_with = ModelNotReady("model 'shapes' has no AVAILABLE version yet")
    busy = client.post("/v2/models/shapes/infer", json=images())
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert busy.get_json() == {"error": "model 'shapes' has no AVAILABLE version yet"}


def test_server_not_ready_is_a_503_with_retry_after(
    make_client: Callable[..., Any], fake_predictor: FakePredictor
) -> None:
    fake_predictor.ready = False
    answer = make_client().get("/v2/health/ready")
    assert answer.status_code == 503
    assert answer.get_json() == {"ready": False}
    assert "Retry-After" in answer.headers


def test_api_keys_guard_everything_but_the_probes(make_client: Callable[..., Any]) -> None:
    client = make_client(api_keys=("k1",))
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    refused = client.post("/v2/models/shapes/infer", json=images())
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(refused.get_json()) == {"error"}
    assert client.get("/v2").status_code == 401
    keyed = client.post("/v2/models/shapes/infer", json=images(), headers={"X-API-Key": "k1"})
    assert keyed.status_code == 200


def test_json_inference_echoes_the_id_and_honours_outputs(client: Any) -> None:
    request = images(2, id="abc", outputs=[{"name": "classes"}])
    answer = client.post("/v2/models/shapes/versions/stable/infer", json=request)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["id"] == "abc"
    assert body["model_version"] == "1"
    assert body["outputs"] == [
        {
            "name": "classes",
            "datatype": "BYTES",
            "shape": [2, 3],
            "data": ["cat", "dog", "bird"] * 2,
        }
    ]


def test_classification_and_full_rows_keep_class_order(client: Any) -> None:
    request = images(
        1,
        outputs=[{"name": "probabilities"}, {"name": "probabilities", "parameters": {}}],
    )
    assert (
        "asked for twice"
        in client.post("/v2/models/shapes/infer", json=request).get_json()["error"]
    )
    request = images(1, outputs=[{"name": "probabilities", "parameters": {"classification": 9}}])
    top = client.post("/v2/models/shapes/infer", json=request).get_json()["outputs"][0]
    assert top["shape"] == [1, 3]  # k is at most the number of classes
    assert top["data"] == ["0.700000:0:cat", "0.200000:1:dog", "0.100000:2:bird"]
    rows = client.post("/v2/models/shapes/infer", json=images(1)).get_json()["outputs"]
    assert [o["name"] for o in rows] == ["classes", "probabilities"]
    assert rows[1]["data"] == pytest.approx([0.7, 0.2, 0.1])


@pytest.mark.parametrize(
    ("request_body", "status", "says"),
    [
        (images(17), 400, "1 to 16 images"),
        (pixels([1, 5, 4, 3]), 400, "the model takes [-1, 4, 4, 3]"),
        (pixels([1, 4, 4]), 400, "has shape [1, 4, 4]"),
        (images(1, outputs=[{"name": "logits"}]), 400, "no output 'logits'"),
        (
            images(1, outputs=[{"name": "classes", "parameters": {"classification": 1}}]),
            400,
            "classification applies to the scores output",
        ),
        ({"inputs": [*images()["inputs"], *pixels([1, 4, 4, 3])["inputs"]]}, 400, "exactly one"),
        (
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [1]}]},
            400,
            "takes BYTES, not FP32",
        ),
        (
            {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
            415,
            "not an image",
        ),
    ],
)
def test_bad_requests(client: Any, request_body: dict[str, Any], status: int, says: str) -> None:
    answer = client.post("/v2/models/shapes/infer", json=request_body)
    assert answer.status_code == status
    assert says in answer.get_json()["error"]


def test_float_pixels_reach_the_pixel_signature(client: Any, fake_predictor: FakePredictor) -> None:
    answer = client.post("/v2/models/shapes/infer", json=pixels([2, 4, 4, 3]))
    assert answer.status_code == 200, answer.get_json()
    sent = fake_predictor.calls[-1]
    assert sent.signature == "predict_pixels"
    assert [(image.pixels, len(image.data or b"")) for image in sent.images] == [(True, 192)] * 2
    assert struct.unpack("<f", (sent.images[0].data or b"")[:4]) == (1.0,)


def test_binary_request_and_response(client: Any) -> None:
    raw = struct.pack("<I", len(PNG)) + PNG
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
            "outputs": [
                {"name": "probabilities"},
                {"name": "classes", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    answer = client.post(
        "/v2/models/shapes/infer",
        data=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
        content_type="application/octet-stream",
    )
    assert answer.status_code == 200, answer.data[:200]
    length = int(answer.headers["Inference-Header-Content-Length"])
    assert answer.mimetype == "application/octet-stream"
    body = json.loads(answer.data[:length])
    assert body["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert body["outputs"][1]["data"] == ["cat", "dog", "bird"]
    assert struct.unpack("<3f", answer.data[length:]) == pytest.approx((0.7, 0.2, 0.1))


def test_limits_of_the_rest_of_the_gateway_apply(make_client: Callable[..., Any]) -> None:
    client = make_client(max_request_bytes=100_000, memory_budget_bytes=1_000_000)
    large = client.post("/v2/models/shapes/infer", data=b"x" * 100_001)
    assert large.status_code == 413
    assert set(large.get_json()) == {"error"}
    # 20,000 numbers in JSON take ~640 kB parsed: more than one client may hold of 1 MB
    many = pixels([1, 4, 4, 3])
    many["inputs"][0]["data"] = [0] * 20_000
    refused = client.post("/v2/models/shapes/infer", json=many)
    assert refused.status_code in (413, 429, 503), refused.get_json()


def test_v2_requests_are_counted_by_route_model_and_version(client: Any) -> None:
    client.post("/v2/models/shapes/versions/1/infer", json=images())
    metrics = client.get("/metrics").get_data(as_text=True)
    lines = [line for line in metrics.splitlines() if "/v2/models/<model>/versions" in line]
    assert any(
        'model="shapes"' in line and 'version="1"' in line and 'status="200"' in line
        for line in lines
        if line.startswith("dynoserve_gateway_requests_total")
    )


def test_the_rollout_key_and_the_served_version_header(
    client: Any, fake_predictor: FakePredictor
) -> None:
    answer = client.post("/v2/models/shapes/infer?client_key=alice", json=images())
    assert answer.headers["Dynoserve-Model-Version"] == answer.get_json()["model_version"]
    assert fake_predictor.calls[-1].client_key == "alice"
    client.post("/v2/models/shapes/infer", json=images(), headers={"Dynoserve-Client-Key": "bob"})
    assert fake_predictor.calls[-1].client_key == "bob"


def test_a_compressed_body_is_refused_by_name(client: Any) -> None:
    answer = client.post(
        "/v2/models/shapes/infer", data=b"\x1f\x8b", headers={"Content-Encoding": "gzip"}
    )
    assert answer.status_code == 415
    assert "Content-Encoding gzip is not supported" in answer.get_json()["error"]


# A key given twice in one object, at any depth (issue 19, item 5): json.loads would keep the
# last value and drop the other silently.
IMAGE = '"name": "images", "datatype": "BYTES", "shape": [1], "data": ["' + DATA_URL + '"]'
PROBABILITIES = '"name": "probabilities"'


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        ('{"id": "1", "inputs": [{' + IMAGE + '}], "id": "2"}', "id", "the JSON body"),
        (
            '{"inputs": [{"datatype": "FP32", ' + IMAGE + "}]}",
            "datatype",
            "inputs[0] of the JSON body",
        ),
        (
            '{"inputs": [{' + IMAGE + '}], "outputs": [{' + PROBABILITIES + "}, {"
            + PROBABILITIES + ', "parameters": {"classification": 1, "classification": 2}}]}',
            "classification",
            "outputs[1].parameters of the JSON body",
        ),
        (
            '{"inputs": [{' + IMAGE + '}], '
            '"parameters": {"binary_data_output": true, "binary_data_output": false}}',
            "binary_data_output",
            "parameters of the JSON body",
        ),
    ],
)  # fmt: skip
def test_a_repeated_json_key_is_refused_at_any_depth(
    client: Any, fake_predictor: FakePredictor, text: str, key: str, where: str
) -> None:
    answer = client.post("/v2/models/shapes/infer", data=text, content_type="application/json")
    assert answer.status_code == 400
    assert answer.get_json() == {"error": f'repeated key "{key}" in {where}; give it once'}
    assert not fake_predictor.calls


def test_a_repeated_key_in_a_binary_requests_json_is_refused(
    client: Any, fake_predictor: FakePredictor
) -> None:
    raw = struct.pack("<I", len(PNG)) + PNG
    size = f'"binary_data_size": {len(raw)}'
    head = (
        '{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], '
        f'"parameters": {{{size}, {size}}}}}]}}'
    ).encode()
    answer = client.post(
        "/v2/models/shapes/infer",
        data=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
        content_type="application/octet-stream",
    )
    assert answer.status_code == 400
    message = 'repeated key "binary_data_size" in inputs[0].parameters of the JSON body'
    assert answer.get_json() == {"error": message + "; give it once"}
    assert not fake_predictor.calls
