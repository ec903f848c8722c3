"""The demo page in real headless Chromium: list models, upload, drop, paste a URL, see bars.

The gateway runs in-process under waitress (the production server code) with FakePredictor
behind it: this tests the page and the HTTP layer, not the model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.errors import ModelNotReady
from gateway.server import build_server, serve
from gateway.settings import Settings
from tests.gateway.conftest import FakePredictor
from tests.imagehost import ImageServer, image_bytes
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG = image_bytes("PNG", size=(32, 32), color="orange")


@pytest.fixture(scope="module")
def live_predictor() -> FakePredictor:
    return FakePredictor()


@pytest.fixture(scope="module")
def live_gateway(live_predictor: FakePredictor) -> Iterator[str]:
    settings = Settings(port=free_port(), bind_host="127.0.0.1", fetch_allow_private=True)
    server = build_server(create_app(settings, live_predictor), settings)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop, 5.0), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{settings.port}"
    stop.set()
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make apt-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, live_gateway: str, live_predictor: FakePredictor) -> Iterator[Any]:
    live_predictor.fail_with = None
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live_gateway + "/")
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    # CSP violations and script errors show up here; expected HTTP errors are filtered.
    assert [p for p in problems if "status of 503" not in p] == []


def rendered(page: Any) -> list[tuple[str, str]]:
    page.wait_for_selector("#results li")
    rows = page.query_selector_all("#results li")
    return [
        (row.get_attribute("data-label"), row.query_selector(".score").inner_text()) for row in rows
    ]


def test_models_and_versions_are_listed(page: Any) -> None:
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["shapes"]
    versions = page.eval_on_selector_all("#version option", "os => os.map(o => o.textContent)")
    assert versions == ["latest", "stable (v1)", "v2 available", "v1 available"]


def test_upload_shows_top5_bars(page: Any, live_predictor: FakePredictor) -> None:
    page.set_input_files("#file", files=[{"name": "o.png", "mimeType": "image/png", "buffer": PNG}])
    assert rendered(page) == [("cat", "70.0%"), ("dog", "20.0%"), ("bird", "10.0%")]
    width = page.eval_on_selector("#results li .bar span", "e => e.style.width")
    assert width == "70%"
    assert "shapes v2" in page.inner_text("#meta")
    assert live_predictor.calls[-1].images[0].data == PNG
    assert live_predictor.calls[-1].top_k == 5


def test_drop_a_file_with_a_pinned_version(page: Any, live_predictor: FakePredictor) -> None:
    page.select_option("#version", label="v1 available")
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], "drop.png", {type: "image/png"});
            const data = new DataTransfer();
            data.items.add(file);
            const zone = document.getElementById("drop");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }""",
        list(PNG),
    )
    assert rendered(page)[0][0] == "cat"
    assert "shapes v1" in page.inner_text("#meta")
    assert live_predictor.calls[-1].images[0].data == PNG
    assert live_predictor.calls[-1].version == 1


def test_paste_a_url(page: Any, image_server: ImageServer, live_predictor: FakePredictor) -> None:
    url = image_server.add_bytes("/browser.png", PNG, {"Content-Type": "image/png"})
    page.select_option("#version", label="stable (v1)")
    page.fill("#image-url", url)
    page.click("#submit")
    assert rendered(page)[0] == ("cat", "70.0%")
    assert live_predictor.calls[-1].images[0].url == url
    assert live_predictor.calls[-1].label == "stable"


def test_errors_are_shown(page: Any, live_predictor: FakePredictor) -> None:
    live_predictor.fail_with = ModelNotReady("model 'shapes' has no AVAILABLE version yet")
    page.set_input_files("#file", files=[{"name": "o.png", "mimeType": "image/png", "buffer": PNG}])
    page.wait_for_selector("#status.error")
    assert "model_not_ready" in page.inner_text("#status")
    assert page.query_selector_all("#results li") == []


# --- the current image is classified again (issue 11, item 6) ---------------------------------


def upload(page: Any) -> None:
    page.set_input_files("#file", files=[{"name": "o.png", "mimeType": "image/png", "buffer": PNG}])


def wait_for_calls(predictor: FakePredictor, count: int) -> None:
    wait_for(lambda: len(predictor.calls) >= count, timeout=10, what=f"{count} predict calls")


def meta_says(page: Any, text: str) -> None:
    page.wait_for_function(
        "t => document.getElementById('meta').textContent.includes(t)", arg=text, timeout=10_000
    )


def test_changing_the_version_reclassifies_the_current_file(
    page: Any, live_predictor: FakePredictor
) -> None:
    upload(page)
    meta_says(page, "shapes v2")
    before = len(live_predictor.calls)
    page.select_option("#version", label="v1 available")
    wait_for_calls(live_predictor, before + 1)
    meta_says(page, "shapes v1")
    assert (live_predictor.calls[-1].images[0].data, live_predictor.calls[-1].version) == (PNG, 1)
    page.select_option("#version", label="stable (v1)")
    wait_for_calls(live_predictor, before + 2)
    assert live_predictor.calls[-1].label == "stable"
    # Classify with an empty URL field sends the current file again (no "paste a URL" error).
    page.click("#submit")
    wait_for_calls(live_predictor, before + 3)
    assert live_predictor.calls[-1].images[0].data == PNG
    assert "Paste" not in page.inner_text("#status")
    assert rendered(page)[0] == ("cat", "70.0%")


def test_choosing_the_same_file_again_classifies_it_again(
    page: Any, live_predictor: FakePredictor
) -> None:
    upload(page)
    meta_says(page, "shapes v2")
    # A browser fires no change event when the file chosen equals the input's value, so the
    # page empties the input once it holds the file (Playwright fires change regardless).
    assert page.eval_on_selector("#file", "e => e.value") == ""
    before = len(live_predictor.calls)
    upload(page)
    wait_for_calls(live_predictor, before + 1)
    assert live_predictor.calls[-1].images[0].data == PNG


def test_changing_model_or_version_reclassifies_the_current_url(
    page: Any, image_server: ImageServer, live_predictor: FakePredictor
) -> None:
    url = image_server.add_bytes("/again.png", PNG, {"Content-Type": "image/png"})
    live_predictor.models["circles"] = [7]
    try:
        page.reload()
        page.wait_for_selector("#model option[value=circles]", state="attached")
        page.select_option("#model", "shapes")  # no image yet: nothing is sent
        page.fill("#image-url", url)
        page.click("#submit")
        meta_says(page, "shapes v2")
        before = len(live_predictor.calls)
        page.select_option("#model", "circles")
        wait_for_calls(live_predictor, before + 1)
        meta_says(page, "circles v7")
        call = live_predictor.calls[-1]
        assert (call.model, call.images[0].url, call.version) == ("circles", url, None)
        page.select_option("#version", label="v7 available")
        wait_for_calls(live_predictor, before + 2)
        assert (live_predictor.calls[-1].images[0].url, live_predictor.calls[-1].version) == (
            url,
            7,
        )
    finally:
        del live_predictor.models["circles"]
