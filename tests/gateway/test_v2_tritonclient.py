"""The Open Inference Protocol against a client nobody here wrote: NVIDIA's tritonclient (HTTP),
talking to the real gateway process and the local model server (session fixtures: model
`shapes`, versions 1 and 2 of the tiny model, labels stable -> 1 and canary -> 2).

The tiny model's answers are known: a solid red image is class 0 (cat), green 1 (dog), blue 2
(bird), from encoded images (serving_default) and from float pixels (predict_pixels) alike.
"""

from __future__ import annotations

import base64
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.gateway.conftest import GatewayProcess
from tests.imagehost import image_bytes

pytestmark = pytest.mark.slow

COLOURS = ("red", "green", "blue")
LABELS = ("cat", "dog", "bird")
SIZE = 32  # the tiny model's input size (predict_pixels: [-1, 32, 32, 3])
RGB = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def triton(gateway: GatewayProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(gateway.base.removeprefix("http://"))
    yield client
    client.close()


def encoded_input(binary: bool = True, size: int = 40) -> httpclient.InferInput:
    """The three colours as PNG files in one BYTES tensor; as JSON, data: URLs (tritonclient
    sends JSON BYTES as UTF-8 text, which image bytes are not)."""
    pngs = [image_bytes("PNG", (size, size), colour) for colour in COLOURS]
    if binary:
        values = np.array(pngs, dtype=np.object_)
    else:
        urls = ["data:image/png;base64," + base64.b64encode(p).decode() for p in pngs]
        values = np.array(urls, dtype=np.object_)
    tensor = httpclient.InferInput("images", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(values, binary_data=binary)
    return tensor


def pixel_input(binary: bool = True) -> httpclient.InferInput:
    pixels = np.stack([np.full((SIZE, SIZE, 3), RGB[c], dtype=np.float32) for c in COLOURS]).astype(
        np.float32
    )
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_server_and_model_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "dynoserve"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    model = triton.get_model_metadata("shapes")
    assert model["name"] == "shapes"
    assert model["versions"] == ["2", "1"]
    assert model["inputs"] == [
        {"name": "images", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "FP32", "shape": [-1, SIZE, SIZE, 3]},
    ]
    assert model["outputs"] == [
        {"name": "classes", "datatype": "BYTES", "shape": [-1, 3]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert triton.get_model_metadata("shapes", "stable")["name"] == "shapes"


def test_model_readiness_by_version_and_label(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_model_ready("shapes")
    for version in ("1", "2", "stable", "canary"):
        assert triton.is_model_ready("shapes", version), version
    assert not triton.is_model_ready("shapes", "7")
    assert not triton.is_model_ready("shapes", "nightly")  # 404: no such label
    assert not triton.is_model_ready("nope")


def test_encoded_images_in_binary_the_clients_default(
    triton: httpclient.InferenceServerClient,
) -> None:
    result = triton.infer("shapes", [encoded_input()], request_id="req-1")
    response = result.get_response()
    assert response["id"] == "req-1"
    assert response["model_name"] == "shapes"
    assert response["model_version"] == "2"  # the latest
    scores = result.as_numpy("probabilities")
    assert scores is not None
    assert scores.dtype == np.float32
    assert scores.shape == (3, 3)
    assert list(scores.argmax(axis=1)) == [0, 1, 2]
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    classes = result.as_numpy("classes")
    assert classes is not None
    assert classes.shape == (3, 3)
    assert [text(c) for c in classes[0]] == list(LABELS)
    # Binary outputs: each output says its size, the JSON is not the whole body.
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


def test_json_data_both_ways_gives_the_same_answer(
    triton: httpclient.InferenceServerClient,
) -> None:
    binary = triton.infer("shapes", [encoded_input()]).as_numpy("probabilities")
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = triton.infer("shapes", [encoded_input(binary=False)], outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]  # the one asked for
    assert "data" in response["outputs"][0]
    assert result.as_numpy("classes") is None
    np.testing.assert_allclose(result.as_numpy("probabilities"), binary, rtol=1e-6)


def test_class_count_gives_the_k_best_as_score_index_label(
    triton: httpclient.InferenceServerClient,
) -> None:
    for binary in (True, False):
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
        ]
        result = triton.infer("shapes", [encoded_input()], outputs=outputs)
        top = result.as_numpy("probabilities")
        assert top is not None
        assert top.shape == (3, 2)
        for row, label in zip(top, LABELS, strict=True):
            # tritonclient gives bytes from binary data, str from JSON
            best, second = (text(entry).split(":") for entry in row)
            assert best[1:] == [str(LABELS.index(label)), label]
            assert float(best[0]) >= float(second[0])


@pytest.mark.parametrize("binary", [True, False])
def test_float_pixels_feed_the_pixel_signature(
    triton: httpclient.InferenceServerClient, binary: bool
) -> None:
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = triton.infer("shapes", [pixel_input(binary)], outputs=outputs)
    scores = result.as_numpy("probabilities")
    assert scores is not None
    assert list(scores.argmax(axis=1)) == [0, 1, 2]


@pytest.mark.parametrize(("version", "served"), [("stable", "1"), ("canary", "2"), ("1", "1")])
def test_a_label_goes_where_the_spec_puts_a_version(
    triton: httpclient.InferenceServerClient, version: str, served: str
) -> None:
    result = triton.infer("shapes", [encoded_input()], model_version=version)
    assert result.get_response()["model_version"] == served


@pytest.mark.parametrize(
    ("model", "version", "tensor", "status", "says"),
    [
        ("nope", "", "images", "404", "no model named 'nope'"),
        ("shapes", "9", "images", "404", "no version 9"),
        ("shapes", "nightly", "images", "404", "no version labelled 'nightly'"),
        ("shapes", "", "other", "400", "has no input 'other'"),
    ],
)
def test_errors_reach_the_client_with_status_and_message(
    triton: httpclient.InferenceServerClient,
    model: str,
    version: str,
    tensor: str,
    status: str,
    says: str,
) -> None:
    data = np.array([image_bytes("PNG", (8, 8), "red")], dtype=np.object_)
    wrong = httpclient.InferInput(tensor, [1], "BYTES")
    wrong.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(model, [wrong], model_version=version)
    assert caught.value.status() == status
    assert says in (caught.value.message() or "")


def test_not_an_image_is_the_gateways_415(triton: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"plain text"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("shapes", [tensor])
    assert caught.value.status() == "415"


def test_v2_requests_count_in_the_gateways_metrics(
    triton: httpclient.InferenceServerClient, gateway: GatewayProcess
) -> None:
    def counted() -> tuple[float, float]:
        with urllib.request.urlopen(gateway.base + "/metrics", timeout=10) as answer:
            text: str = answer.read().decode()
        infers = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("dynoserve_gateway_requests_total{")
            and 'route="/v2/models/<model>/infer"' in line
            and 'status="200"' in line
        )
        admitted = re.search(r"^dynoserve_gateway_admitted_requests_total ([0-9.e+]+)", text, re.M)
        return infers, float(admitted.group(1)) if admitted else -1.0

    before = counted()
    # Images of their own: the answer cache would answer seen ones without admission.
    triton.infer("shapes", [encoded_input(size=41)])
    after = counted()
    assert after[0] == before[0] + 1
    assert after[1] == before[1] + 1  # through admission, as the image-URL API


def test_binary_body_by_hand(gateway: GatewayProcess) -> None:
    """The binary extension's framing without the client: JSON, then a BYTES tensor's bytes."""
    png = image_bytes("PNG", (16, 16), "green")
    raw = len(png).to_bytes(4, "little") + png
    head = (
        '{"id":"h","inputs":[{"name":"images","datatype":"BYTES","shape":[1],'
        f'"parameters":{{"binary_data_size":{len(raw)}}}}}],'
        '"outputs":[{"name":"probabilities","parameters":{"classification":1}}]}'
    ).encode()
    request = urllib.request.Request(
        gateway.base + "/v2/models/shapes/versions/canary/infer",
        data=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        body: Any = answer.read()
        assert answer.headers["Content-Type"] == "application/json"
    assert b'"model_version":"2"' in body
    assert b":1:dog" in body
