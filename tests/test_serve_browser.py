"""End to end: the real server (uvicorn on loopback) driven through its web page in headless Chromium.

Needs Debian's ``chromium`` and the ``playwright`` Python package (``ci-serve-setup.sh`` installs
both); Playwright drives /usr/bin/chromium and never downloads a browser of its own.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
GEOTIFF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (run ci-serve-setup.sh)"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (run ci-serve-setup.sh)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "browser-test-token"


def _serve(workdir: Path, **settings) -> Iterator[str]:
    """``segearth serve``'s app with the tiny model, on a loopback port in a background thread."""
    import uvicorn

    from segearth import SegEarthR1, small_config
    from segearth.predictor import Predictor
    from segearth.serve import ServeSettings, create_app
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    predictor = Predictor(SegEarthR1(small_config()).eval(), byte_level_tokenizer())
    app = create_app(predictor, "tiny-random", ServeSettings(workdir=workdir, **settings))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    yield from _serve(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def token_server(tmp_path_factory) -> Iterator[str]:
    yield from _serve(tmp_path_factory.mktemp("serve-token"), token=TOKEN)


@pytest.fixture
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_token_prompt_then_upload(token_server, browser):
    raster = GEOTIFF / "naip_rgbn_2019.tif"
    if not raster.is_file():
        pytest.skip(f"{raster} not found")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(token_server + "/")
    expect(page.locator("#token-dialog")).to_be_visible()
    page.fill("#token", "wrong-token-123")
    page.click("#token-form button")
    expect(page.locator("#token-note")).to_contain_text("refused")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#model")).to_contain_text("tiny-random")
    expect(page.locator("#token-dialog")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('segearth-token')") == TOKEN
    page.set_input_files("#file", str(raster))  # uploads and the preview need the token too
    expect(page.locator("#meta")).to_contain_text("934 × 723 px")
    page.goto(token_server + "/docs")  # the docs page reads the token the main page stored for this tab
    expect(page.locator(".opblock").first).to_be_visible(timeout=20_000)


def test_upload_ask_overlay_download(server, tmp_path):
    raster = GEOTIFF / "naip_rgbn_2019.tif"
    if not raster.is_file():
        pytest.skip(f"{raster} not found")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page.goto(server + "/")
            expect(page.locator("#model")).to_contain_text("tiny-random")

            page.set_input_files("#file", str(raster))
            expect(page.locator("#meta")).to_contain_text("EPSG:26914")
            expect(page.locator("#meta")).to_contain_text("934 × 723 px")
            page.wait_for_function("document.getElementById('image').naturalWidth === 934")

            page.fill("#question", "where could floodwater collect after heavy rain?")
            page.click("#ask")
            page.wait_for_function(
                "() => { const o = document.getElementById('overlay'); return !o.hidden && o.naturalWidth === 934; }")
            expect(page.locator("#history li")).to_have_count(1)
            expect(page.locator("#scores")).to_contain_text("mean probability")

            page.fill("#opacity", "0.8")
            assert page.eval_on_selector("#overlay", "o => o.style.opacity") == "0.8"
            box = page.locator("#viewer").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            before = page.eval_on_selector("#stage", "s => s.style.transform")
            page.mouse.wheel(0, -200)
            page.wait_for_function(f"document.getElementById('stage').style.transform !== {json.dumps(before)}")
            page.mouse.move(box["x"] + box["width"] / 2 + 5, box["y"] + box["height"] / 2 + 5)
            expect(page.locator("#coords")).to_contain_text("EPSG:26914")
            expect(page.locator("#coords")).to_contain_text(" · x ")

            with page.expect_download() as info:
                page.click("#dl-geojson")
            download = info.value
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            collection = json.loads(saved.read_text())
            assert collection["type"] == "FeatureCollection"
            assert all(f["properties"]["question"].startswith("where could floodwater") for f in collection["features"])

            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000

            # API errors reach the page as readable sentences.
            bad = tmp_path / "notes.tif"
            bad.write_text("not a raster")
            page.set_input_files("#file", str(bad))
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error-text")).to_contain_text(
                "Cannot use this input: the uploaded file is not a GeoTIFF")
        finally:
            browser.close()


def test_docs_render_offline(server, browser):
    page = browser.new_page()
    remote = []

    def only_local(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(server + "/docs")
    expect(page.locator(".opblock").first).to_be_visible(timeout=20_000)
    expect(page.locator("#swagger-ui")).to_contain_text("/images/{image_id}/ask")
    assert remote == []
