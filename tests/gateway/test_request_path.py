"""The real request path: gateway process (no TensorFlow) -> local model server, images fetched
from a real loopback HTTP server. Slow: it starts a model server and gateway processes.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from envsettings import EX_CONFIG
from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.conftest import (
    GatewayProcess,
    Stack,
    animated_gif,
    start_gateway,
)
from tests.imagehost import ImageServer, image_bytes
from tests.support import http_json, wait_for

pytestmark = pytest.mark.slow

# A blue no other test sends: the session gateway's answer cache must miss on its first request.
JPEG = image_bytes("JPEG", size=(64, 48), color="#0302fd")
PNG = image_bytes("PNG", size=(40, 40), color="green")


def call(
    gateway: GatewayProcess, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """(status, headers, parsed JSON) of one request to the gateway."""
    return http_json(gateway.base + path, body, headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def scores(body: dict[str, Any]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in body["predictions"]}


def test_ready_and_listed(gateway: GatewayProcess) -> None:
    status, _, body = call(gateway, "/readyz")
    assert (status, body["ready"], body["models"]) == (200, True, {"shapes": "AVAILABLE"})
    _, _, listing = call(gateway, "/v1/models")
    assert listing["models"] == [
        {
            "name": "shapes",
            "versions": [
                {"version": 2, "state": "AVAILABLE"},
                {"version": 1, "state": "AVAILABLE"},
            ],
            "labels": {"canary": 2, "stable": 1},
        }
    ]
    _, _, detail = call(gateway, "/v1/models/shapes")
    assert detail["num_classes"] == 3
    assert detail["signature"]["input_kind"] == "encoded"
    assert detail["signature"]["inputs"] == {"images": {"dtype": "DT_STRING", "shape": [-1]}}


def test_url_b64_and_upload_agree(gateway: GatewayProcess, image_server: ImageServer) -> None:
    url = image_server.add_bytes("/blue.jpg", JPEG, {"Content-Type": "image/jpeg"})
    status, headers, by_url = call(gateway, "/v1/models/shapes:predict", {"image_url": url})
    assert status == 200, by_url
    assert headers["X-Request-ID"]
    assert by_url["model"] == "shapes"
    assert by_url["version"] == 2
    assert {p["label"] for p in by_url["predictions"]} == {"cat", "dog", "bird"}
    assert sum(p["score"] for p in by_url["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert by_url["timings_ms"]["fetch"] > 0
    assert headers["Dynoserve-Cache"] == "miss"
    assert by_url["timings_ms"]["inference"] > 0
    _, _, by_b64 = call(gateway, "/v1/models/shapes:predict", {"image_b64": b64(JPEG)})
    assert scores(by_b64) == pytest.approx(scores(by_url), abs=1e-6)
    assert by_b64["timings_ms"]["fetch"] == 0
    upload = multipart_upload(gateway, "/v1/models/shapes:predict", JPEG)
    assert scores(upload) == pytest.approx(scores(by_url), abs=1e-6)
    _, _, by_get = call(gateway, f"/v1/models/shapes:predict?image_url={url}&top_k=1")
    assert len(by_get["predictions"]) == 1


def multipart_upload(gateway: GatewayProcess, path: str, data: bytes) -> dict[str, Any]:
    boundary = "dynoserve-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        gateway.base + path,
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def test_version_and_label_pinning(gateway: GatewayProcess) -> None:
    image = {"image_b64": b64(PNG)}
    _, _, latest = call(gateway, "/v1/models/shapes:predict", image)
    _, _, v1 = call(gateway, "/v1/models/shapes:predict?version=1", image)
    _, _, stable = call(gateway, "/v1/models/shapes:predict?label=stable", image)
    _, _, canary = call(gateway, "/v1/models/shapes:predict?label=canary", image)
    assert (latest["version"], v1["version"], stable["version"], canary["version"]) == (2, 1, 1, 2)
    assert scores(stable) == scores(v1)
    assert scores(canary) == scores(latest)
    assert scores(v1) != scores(latest)  # different weights: the pin really reached version 1


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/shapes:predict?version=9", 404, "version_not_found"),
        ("/v1/models/shapes:predict?label=nope", 404, "label_not_found"),
        ("/v1/models/unknown:predict", 404, "model_not_found"),
    ],
)
def test_unknown_model_version_label(
    gateway: GatewayProcess, path: str, status: int, code: str
) -> None:
    got, _, body = call(gateway, path, {"image_b64": b64(PNG)})
    assert (got, body["error"]["code"]) == (status, code)


def test_a_label_whose_version_is_not_available_yet_is_503(
    model_stack: Stack, tmp_path: Path
) -> None:
    """models.config names label `next` -> version 3, which the model server has not loaded
    (as while a new version is still loading): retry later, not "no such label"."""
    config = tmp_path / "models.config"
    canary = 'version_labels { key: "canary" value: 2 }'
    text = model_stack.config_file.read_text()
    next_label = canary + '\n    version_labels { key: "next" value: 3 }'
    config.write_text(text.replace(canary, next_label))
    app = create_app(Settings(model_server=model_stack.grpc_target, model_config_file=config))
    client = app.test_client()
    try:
        assert client.get("/v1/models/shapes").get_json()["labels"]["next"] == 3
        image = {"image_b64": b64(PNG)}
        waiting = client.post("/v1/models/shapes:predict?label=next", json=image)
        assert waiting.status_code == 503, waiting.get_json()
        assert waiting.headers["Retry-After"] == "1"
        assert waiting.get_json()["error"]["code"] == "model_not_ready"
        assert "version 3" in waiting.get_json()["error"]["message"]
        assert client.post("/v1/models/shapes:predict?label=stable", json=image).status_code == 200
    finally:
        app.extensions["dynoserve.predictor"].close()


@pytest.mark.parametrize(
    ("path", "lists"),
    [
        ("/v1/models/shapes:predict?version=9", "versions: 1 (AVAILABLE), 2 (AVAILABLE)"),
        ("/v1/models/shapes:predict?label=nope", "labels: canary (v2), stable (v1)"),
        ("/v1/models/unknown:predict", "models: shapes"),
    ],
)
def test_not_found_messages_list_what_exists(
    gateway: GatewayProcess, path: str, lists: str
) -> None:
    _, _, body = call(gateway, path, {"image_b64": b64(PNG)})
    assert lists in body["error"]["message"], body


@pytest.mark.parametrize(
    ("route", "payload", "status", "code"),
    [
        ("/missing.png", None, 502, "image_host_error"),
        ("/text.txt", b"hello, not an image", 415, "unsupported_image_format"),
        ("/cut.jpg", JPEG[: len(JPEG) // 2], 422, "undecodable_image"),
        ("/huge.png", image_bytes("PNG", size=(9000, 5000)), 413, "image_too_large"),
    ],
)
def test_image_errors_through_the_process(
    gateway: GatewayProcess,
    image_server: ImageServer,
    route: str,
    payload: bytes | None,
    status: int,
    code: str,
) -> None:
    url = image_server.base + route
    if payload is not None:
        image_server.add_bytes(route, payload)
    got, _, body = call(gateway, "/v1/models/shapes:predict", {"image_url": url})
    assert (got, body["error"]["code"]) == (status, code), body


def test_too_many_redirects_through_the_process(
    gateway: GatewayProcess, image_server: ImageServer
) -> None:
    url = image_server.add_redirect("/round-and-round", "/round-and-round")
    got, _, body = call(gateway, "/v1/models/shapes:predict", {"image_url": url})
    assert (got, body["error"]["code"]) == (400, "too_many_redirects"), body


def test_forbidden_url_through_the_process(gateway: GatewayProcess) -> None:
    got, _, body = call(
        gateway, "/v1/models/shapes:predict", {"image_url": "http://169.254.169.254/latest/"}
    )
    assert (got, body["error"]["code"]) == (400, "image_url_forbidden")


def test_batch_mixes_results_and_errors(gateway: GatewayProcess, image_server: ImageServer) -> None:
    url = image_server.add_bytes("/batch.jpg", JPEG)
    images = [
        {"image_url": url},
        {"image_b64": b64(JPEG)},
        {"image_url": image_server.base + "/absent.jpg"},
        {"image_b64": b64(b"nope")},
        {"image_b64": b64(image_bytes("WEBP", size=(20, 20)))},
        {"image_b64": b64(animated_gif())},
        {"image_b64": b64(image_bytes("BMP"))},
    ]
    status, _, body = call(gateway, "/v1/models/shapes:predict", {"images": images})
    assert status == 200, body
    results = body["results"]
    assert len(results) == len(images)
    assert results[0]["predictions"] == results[1]["predictions"]
    assert results[2]["error"]["code"] == "image_host_error"
    assert results[3]["error"]["code"] == "unsupported_image_format"
    for converted in results[4:]:
        assert len(converted["predictions"]) == 3
    _, _, single = call(gateway, "/v1/models/shapes:predict", {"image_b64": b64(JPEG)})
    assert results[0]["predictions"] == single["predictions"]


def test_the_model_server_judges_corrupt_images_of_a_tolerant_model(
    gateway: GatewayProcess,
) -> None:
    """The tiny models' serving_default reports each image's decode (`decoded`): the gateway
    vets JPEG and PNG by their header alone, and the rows that did not decode are their 422
    while the batch's good image is answered as alone."""
    _, _, detail = call(gateway, "/v1/models/shapes")
    assert detail["signature"]["decode_check"] == "model"
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    cut = {}
    for fmt in ("JPEG", "PNG"):
        out = io.BytesIO()
        noisy.save(out, format=fmt)
        cut[fmt] = out.getvalue()[: len(out.getvalue()) // 2]
    images = [
        {"image_b64": b64(cut["JPEG"])},
        {"image_b64": b64(JPEG)},
        {"image_b64": b64(cut["PNG"])},
    ]
    status, _, body = call(gateway, "/v1/models/shapes:predict", {"images": images})
    assert status == 200, body
    broken, good, broken_png = body["results"]
    for failed in (broken, broken_png):
        assert (failed["status"], failed["error"]["code"]) == (422, "undecodable_image"), failed
        assert "model server could not decode" in failed["error"]["message"]
    _, _, single = call(gateway, "/v1/models/shapes:predict", {"image_b64": b64(JPEG)})
    assert good["predictions"] == single["predictions"]
    status, _, alone = call(gateway, "/v1/models/shapes:predict", {"image_b64": b64(cut["PNG"])})
    assert (status, alone["error"]["code"]) == (422, "undecodable_image"), alone


def test_gateway_matches_a_direct_official_grpc_call(
    gateway: GatewayProcess, model_stack: Stack
) -> None:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "shapes"
    request.inputs["images"].dtype = 7  # DT_STRING
    request.inputs["images"].tensor_shape.dim.add(size=1)
    request.inputs["images"].string_val.append(JPEG)
    with grpc.insecure_channel(model_stack.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=10)
    direct = dict(
        zip(
            [c.decode() for c in response.outputs["classes"].string_val],
            response.outputs["probabilities"].float_val,
            strict=True,
        )
    )
    _, _, via_gateway = call(gateway, "/v1/models/shapes:predict", {"image_b64": b64(JPEG)})
    assert via_gateway["version"] == response.model_spec.version.value
    assert scores(via_gateway) == pytest.approx(direct, abs=1e-6)


def test_float_input_signature_gets_pillow_pixels(model_stack: Stack) -> None:
    """predict_pixels takes [-1, 32, 32, 3] floats: the gateway decodes and resizes itself."""
    client = create_app(
        Settings(model_server=model_stack.grpc_target, model_config_file=model_stack.config_file)
    ).test_client()
    pixels_app = create_app(
        Settings(
            model_server=model_stack.grpc_target,
            model_config_file=model_stack.config_file,
            signature_name="predict_pixels",
        )
    )
    pixels = pixels_app.test_client()
    detail = pixels.get("/v1/models/shapes").get_json()
    assert detail["signature"]["input_kind"] == "pixels"
    assert detail["signature"]["input_size"] == [32, 32]
    # A solid image resizes to the same pixels whatever the filter: both paths must agree.
    body = {"image_b64": b64(PNG)}
    via_pixels = pixels.post("/v1/models/shapes:predict", json=body).get_json()
    via_bytes = client.post("/v1/models/shapes:predict", json=body).get_json()
    assert scores(via_pixels) == pytest.approx(scores(via_bytes), abs=1e-4)
    for app in (client.application, pixels_app):
        app.extensions["dynoserve.predictor"].close()


def test_model_server_down_is_503_and_not_ready() -> None:
    from tests.support import free_port

    app = create_app(Settings(model_server=f"127.0.0.1:{free_port()}", models=("shapes",)))
    client = app.test_client()
    response = client.post("/v1/models/shapes:predict", json={"image_b64": b64(PNG)})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["ready"] is False
    app.extensions["dynoserve.predictor"].close()


def test_deadline_exceeded_is_504(model_stack: Stack) -> None:
    # gRPC rounds deadlines up to whole milliseconds and the tiny model can answer within one,
    # so the call is given real work: decoding and resizing a 2000x2000 image takes far longer.
    app = create_app(Settings(model_server=model_stack.grpc_target, grpc_deadline_s=0.0005))
    large = b64(image_bytes("PNG", (2000, 2000), "red"))
    response = app.test_client().post("/v1/models/shapes:predict", json={"image_b64": large})
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "deadline_exceeded"
    app.extensions["dynoserve.predictor"].close()


def test_metrics_after_traffic(gateway: GatewayProcess) -> None:
    call(gateway, "/v1/models/shapes:predict", {"image_b64": b64(PNG)})
    with urllib.request.urlopen(gateway.base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'dynoserve_gateway_inference_duration_seconds_count{model="shapes"}' in text
    assert "dynoserve_gateway_fetch_bytes_count" in text
    assert 'route="/v1/models/<model>:predict",status="200",version="2"' in text


def test_logs_are_json_with_request_ids(gateway: GatewayProcess) -> None:
    call(gateway, "/healthz", headers={"X-Request-ID": "find-me-42"})
    lines = [
        json.loads(line) for line in gateway.process.log().splitlines() if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == "find-me-42"]
    assert mine
    assert mine[0]["status"] == 200


def test_rss_stays_small_under_load(gateway: GatewayProcess, image_server: ImageServer) -> None:
    url = image_server.add_bytes("/load.jpg", image_bytes("JPEG", size=(640, 480)))

    def worker() -> None:
        for _ in range(15):
            call(gateway, "/v1/models/shapes:predict", {"image_url": url})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    status = Path(f"/proc/{gateway.pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    assert rss_kb < 80 * 1024, f"gateway peaked at {rss_kb // 1024} MB"


def test_sigterm_finishes_in_flight_requests(model_stack: Stack, image_server: ImageServer) -> None:
    slow_body = JPEG

    def slow(h: Any) -> None:
        time.sleep(1.5)
        h.send_response(200)
        h.send_header("Content-Length", str(len(slow_body)))
        h.end_headers()
        h.wfile.write(slow_body)

    image_server.routes["/slow.jpg"] = slow
    running = start_gateway(model_stack, "gateway-sigterm")
    try:
        answers: list[tuple[int, Any]] = []
        request = threading.Thread(
            target=lambda: answers.append(
                call(
                    running,
                    "/v1/models/shapes:predict",
                    {"image_url": image_server.base + "/slow.jpg"},
                )[::2]
            )
        )
        request.start()
        wait_for(lambda: any(p == "/slow.jpg" for p, _ in image_server.hits), timeout=10)
        started = time.monotonic()
        assert running.process.proc is not None
        running.process.proc.send_signal(signal.SIGTERM)
        request.join(20)
        code = running.process.proc.wait(20)
        assert answers[0][0] == 200, answers
        assert code == 0
        assert time.monotonic() - started < 10
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(running.base + "/healthz", timeout=2)
    finally:
        running.process.stop()
    assert "draining" in running.process.log()


def test_bad_settings_exit_with_a_message(model_stack: Stack, tmp_path: Any) -> None:
    import subprocess

    from tests.gateway.conftest import gateway_env
    from tests.support import GATEWAY_PYTHON

    env = gateway_env(model_stack, 1, DYNOSERVE_GRPC_DEADLINE_S="45")
    result = subprocess.run(
        [str(GATEWAY_PYTHON), "-m", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == EX_CONFIG
    assert "DYNOSERVE_GRPC_DEADLINE_S" in result.stderr
