"""End to end: the real server (uvicorn on loopback) driven through its web page in headless Chromium.

Needs Debian's ``chromium`` and the ``playwright`` Python package (``ci-serve-setup.sh`` installs
both); Playwright drives /usr/bin/chromium and never downloads a browser of its own.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.warp import transform

CHROMIUM = Path("/usr/bin/chromium")
GEOTIFF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_PLAYWRIGHT = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright is not installed (run ci-serve-setup.sh)"),
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


def _depth(mask: np.ndarray, limit: int = 16) -> np.ndarray:
    """How many 4-neighbour erosions each pixel survives (capped): its distance inside ``mask``."""
    depth, current = np.zeros(mask.shape, np.int32), mask.copy()
    for _ in range(limit):
        depth += current
        shrunk = current.copy()
        shrunk[1:] &= current[:-1]
        shrunk[:-1] &= current[1:]
        shrunk[:, 1:] &= current[:, :-1]
        shrunk[:, :-1] &= current[:, 1:]
        shrunk[[0, -1]] = False
        shrunk[:, [0, -1]] = False
        current = shrunk
    return depth


def _lonlat(src, col: float, row: float) -> tuple[float, float]:
    """The lon/lat of a raster pixel's centre, by rasterio (independent of the server's code)."""
    x, y = src.xy(row, col)  # the pixel's centre
    (lon,), (lat,) = transform(src.crs, "EPSG:4326", [x], [y])
    return lon, lat


def _on_screen(page, lon: float, lat: float) -> dict:
    """Page coordinates of a lon/lat on the map, and whether an answer polygon is drawn there."""
    return page.evaluate("""([lat, lon]) => {
        const p = window.segearthMap.latLngToContainerPoint([lat, lon]);
        const box = document.getElementById("map").getBoundingClientRect();
        const x = box.left + p.x, y = box.top + p.y;
        const hit = document.elementFromPoint(x, y);
        return {x, y, answer: !!hit && hit.classList.contains("answer-polygon")};
    }""", [lat, lon])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:  # the test server on 127.0.0.1
        return r.read()


def test_upload_ask_map_download(server, browser, tmp_path):
    raster = GEOTIFF / "naip_rgbn_2019.tif"
    if not raster.is_file():
        pytest.skip(f"{raster} not found")
    src = rasterio.open(raster)
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page.goto(server + "/")
    expect(page.locator("#model")).to_contain_text("tiny-random")

    page.set_input_files("#file", str(raster))
    expect(page.locator("#meta")).to_contain_text("EPSG:26914")
    expect(page.locator("#meta")).to_contain_text("934 × 723 px")
    page.wait_for_function("() => { const i = document.querySelector('img.leaflet-image-layer');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    image_id = page.locator("#images").input_value()

    # The image is in its true place: zoomed in on a known pixel, the screen shows that pixel's colour.
    col, row = 300, 200
    lon, lat = _lonlat(src, col, row)
    page.evaluate("([lat, lon]) => window.segearthMap.setView([lat, lon], 19, {animate: false})", [lat, lon])
    point = _on_screen(page, lon, lat)
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": point["x"], "y": point["y"], "width": 1, "height": 1})))
    seen = np.asarray(shot.convert("RGB"))[0, 0].astype(int)
    around = src.read([1, 2, 3], window=((row - 1, row + 2), (col - 1, col + 2))).reshape(3, -1).T.astype(int)
    assert np.abs(around - seen).max(axis=1).min() <= 8, (seen, around)  # nearest resampling: a neighbour at most
    bounds = json.loads(_get(f"{server}/images/{image_id}"))["map"]["bounds"]
    page.evaluate("b => window.segearthMap.fitBounds(b, {animate: false})", bounds)

    # Ask until an answer has a region with a clear inside and outside (the random model decides).
    for question in ["where could floodwater collect after heavy rain?", "the roads", "the fields"]:
        page.fill("#question", question)
        page.click("#ask")
        expect(page.locator("#status")).to_contain_text("Answered")
        number = len(page.locator("#history li").all())
        with rasterio.MemoryFile(_get(f"{server}/images/{image_id}/answers/{number}/geotiff")) as mem:
            with mem.open() as m:
                mask = m.read(1) > 0
        inside, outside = _depth(mask), _depth(~mask)
        if inside.max() >= 10 and outside.max() >= 10:
            break
    else:
        pytest.fail("no answer had a region 10 pixels deep inside and outside")
    page.wait_for_function("document.querySelectorAll('path.answer-polygon').length > 0")
    r_in, c_in = np.unravel_index(np.argmax(inside), mask.shape)
    r_out, c_out = np.unravel_index(np.argmax(outside), mask.shape)
    lon_in, lat_in = _lonlat(src, c_in, r_in)
    assert _on_screen(page, lon_in, lat_in)["answer"], "no polygon over a pixel inside the answer"
    assert not _on_screen(page, *_lonlat(src, c_out, r_out))["answer"], "a polygon over a pixel outside it"

    # The cursor's lon/lat is that pixel's (1e-4 degree is about 10 m, two pixels of this raster).
    point = _on_screen(page, lon_in, lat_in)
    page.mouse.move(point["x"], point["y"])
    expect(page.locator("#coords")).to_contain_text("lat")
    numbers = [float(v) for v in re.findall(r"-?\d+\.\d+", page.locator("#coords").inner_text())]
    assert numbers == pytest.approx([lon_in, lat_in], abs=1e-4)
    page.mouse.click(point["x"], point["y"])  # the polygon's popup
    expect(page.locator(".leaflet-popup-content")).to_contain_text("mean probability")
    expect(page.locator(".leaflet-popup-content")).to_contain_text(question)
    expect(page.locator(".leaflet-popup-content")).to_contain_text("m²")

    page.fill("#image-opacity", "0.5")
    assert page.eval_on_selector("img.leaflet-image-layer", "i => i.style.opacity") == "0.5"
    # The answer as a raster too, loaded on the image's grid and bounds, with its own opacity slider.
    page.wait_for_function("() => { const i = document.querySelector('img.answer-raster');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    sizes = page.eval_on_selector_all("img.leaflet-image-layer", "l => l.map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(sizes) == 2 and sizes[0] == sizes[1]
    page.fill("#mask-opacity", "0.3")
    assert page.eval_on_selector("img.answer-raster", "i => i.style.opacity") == "0.3"
    for fmt, ending in [("gpkg", ".gpkg"), ("probabilities", "_prob.tif")]:
        with page.expect_download() as info:
            page.click(f"#dl-{fmt}")
        assert info.value.suggested_filename.endswith(ending)
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        assert saved.stat().st_size > 1000
    with page.expect_download() as info:
        page.click("#dl-geojson")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    collection = json.loads(saved.read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    assert all(f["properties"]["question"] == question for f in collection["features"])

    shot = tmp_path / "serve_page.png"  # pytest keeps the last runs' tmp folders: look at it there
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # API errors reach the page as readable sentences.
    bad = tmp_path / "notes.tif"
    bad.write_text("not a raster")
    page.set_input_files("#file", str(bad))
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("Cannot use this input: the uploaded file is not a GeoTIFF")


def test_raster_without_crs_is_shown_on_a_pixel_plane(server, browser, tmp_path):
    png = tmp_path / "photo.png"
    rgb = np.zeros((120, 200, 3), np.uint8)
    rgb[:60] = (250, 20, 20)  # top half red, bottom half blue: a flipped y axis would swap them
    rgb[60:] = (20, 20, 250)
    Image.fromarray(rgb).save(png)
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(server + "/")
    page.set_input_files("#file", str(png))
    expect(page.locator("#meta")).to_contain_text("200 × 120 px")
    page.wait_for_function("() => { const i = document.querySelector('img.leaflet-image-layer');"
                           " return i && i.complete && i.naturalWidth === 200; }")
    for (x, y), colour in {(100, 30): (250, 20, 20), (100, 90): (20, 20, 250)}.items():
        point = page.evaluate("""([x, y]) => {
            const p = window.segearthMap.latLngToContainerPoint([-y, x]);
            const box = document.getElementById("map").getBoundingClientRect();
            return {x: box.left + p.x, y: box.top + p.y}; }""", [x, y])
        shot = Image.open(io.BytesIO(page.screenshot(clip={**point, "width": 1, "height": 1})))
        assert np.abs(np.asarray(shot.convert("RGB"))[0, 0].astype(int) - colour).max() <= 8
        page.mouse.move(point["x"], point["y"])
        expect(page.locator("#coords")).to_contain_text(f"x {x}.")
        expect(page.locator("#coords")).to_contain_text("pixel coordinates")


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
