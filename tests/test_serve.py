"""`segearth serve` API with FastAPI's TestClient and the tiny random-weight model."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import numpy as np
import pytest
import rasterio
import torch
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from segearth import SegEarthR1, small_config
from segearth.predictor import Predictor
from segearth.serve import ServeSettings, create_app
from segearth.serve.cache import FeatureCache, predictor_bytes
from segearth.serve.command import serve
from segearth.serve.queue import ModelQueue, QueueFull
from segearth.tokenizer import byte_level_tokenizer

from conftest import SHARED

GEOTIFF = SHARED / "data" / "geotiff"
BASE = "http://127.0.0.1:8000"  # a Host the server answers to by default (TestClient's own is "testserver")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(SegEarthR1(small_config()).eval(), byte_level_tokenizer())


@pytest.fixture
def make_client(predictor, tmp_path):
    """Start an app with the given settings; every client is shut down (temp folder removed) at the end."""
    clients = []

    def make(**settings) -> TestClient:
        client = TestClient(create_app(predictor, "tiny", ServeSettings(workdir=tmp_path, **settings)), base_url=BASE)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def _raster(name: str):
    path = GEOTIFF / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def _upload(client: TestClient, name: str = "naip_rgbn_2019.tif", **params) -> dict:
    with open(_raster(name), "rb") as f:
        r = client.post("/images", files={"file": (name, f, "image/tiff")}, params=params)
    assert r.status_code == 201, r.text
    return r.json()


def _ask(client: TestClient, image_id: str, questions, fmt: str = "geojson"):
    return client.post(f"/images/{image_id}/ask", json={"questions": questions, "format": fmt})


def test_upload_reports_metadata_and_never_uses_the_client_filename(client, tmp_path):
    with open(_raster("naip_rgbn_2019.tif"), "rb") as f:
        r = client.post("/images", files={"file": ("../../evil/naip.tif", f, "image/tiff")}, params={"bands": "4,3,2"})
    assert r.status_code == 201, r.text
    meta = r.json()
    with rasterio.open(GEOTIFF / "naip_rgbn_2019.tif") as src:
        assert (meta["width"], meta["height"], meta["bands"]) == (src.width, src.height, src.count)
        assert meta["crs"] == src.crs.to_string() and meta["bounds"] == pytest.approx(list(src.bounds))
        assert meta["dtypes"] == list(src.dtypes)
    assert meta["format"] == "GeoTIFF" and meta["georeferenced"] and meta["rgb_bands"] == [4, 3, 2]
    assert meta["filename"] == "naip.tif"
    stored = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert "naip.tif" not in stored and "raster.tif" in stored
    assert not (tmp_path / "evil").exists()
    preview = client.get(meta["preview"]["url"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert client.get("/images").json()[0]["id"] == meta["id"]


def test_raw_body_png_upload_without_georeferencing(client):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    r = client.post("/images", content=buf.getvalue(), params={"filename": "photo.png"},
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["format"] == "PNG" and meta["crs"] is None and not meta["georeferenced"]
    assert (meta["width"], meta["height"]) == (200, 120)
    ask = _ask(client, meta["id"], "the red roofs").json()
    geojson = client.get(ask["answers"][0]["downloads"]["geojson"]).json()
    assert geojson["type"] == "FeatureCollection" and "segearth:coordinates" in geojson


def test_upload_size_limit_gives_413_while_streaming(make_client):
    client = make_client(max_upload_mb=0.01)
    big = b"II*\x00" + bytes(20_000)
    assert client.post("/images", content=big).status_code == 413  # Content-Length checked first
    r = client.post("/images", content=iter([big[:8000], big[8000:]]))  # chunked: no Content-Length
    assert r.status_code == 413 and "limit of 0.01 MB" in r.json()["detail"]
    r = client.post("/images", files={"file": ("big.tif", big, "image/tiff")})
    assert r.status_code == 413
    assert client.get("/images").json() == []


@pytest.mark.parametrize(("content", "message"), [
    (b"hello world", "not a GeoTIFF, PNG or JPEG"),
    (b"", "empty"),
    (b"II*\x00" + b"\x07" * 64, "bad.tif: not a readable raster"),
])
def test_bad_uploads_give_422_with_a_clear_message(client, content, message):
    r = client.post("/images", files={"file": ("bad.tif", content, "image/tiff")})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert message in detail and "segearth-serve-" not in detail  # the temp path never leaks


def test_sar_raster_gets_the_cli_message(client):
    with open(_raster("spacenet_sar_complex64.tif"), "rb") as f:
        r = client.post("/images", files={"file": ("sar.tif", f, "image/tiff")})
    assert r.status_code == 422 and "complex SAR data" in r.json()["detail"]
    assert client.post("/images", content=b"II*\x00", params={"bands": "0"}).status_code == 422


@pytest.mark.parametrize("fmt", ["geotiff", "geojson", "png"])
def test_ask_returns_scores_and_the_requested_format(client, fmt):
    meta = _upload(client, bands="4,3,2")
    r = _ask(client, meta["id"], ["the water"], fmt)
    assert r.status_code == 200, r.text
    answer = r.json()["answers"][0]
    assert answer["url"] == answer["downloads"][fmt]
    assert set(answer["scores"]) == {"target_fraction", "mean_probability", "max_probability", "present", "regions",
                                     "area_m2"}
    assert 0 <= answer["scores"]["target_fraction"] <= 1
    body = client.get(answer["url"])
    assert body.status_code == 200 and "attachment" in body.headers["content-disposition"]
    if fmt == "geotiff":
        source = rasterio.open(GEOTIFF / "naip_rgbn_2019.tif")
        with rasterio.MemoryFile(body.content) as mem, mem.open() as m, source as src:
            assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
            assert set(np.unique(m.read(1))) <= {0, 255} and m.tags()["question"] == "the water"
    elif fmt == "geojson":
        collection = json.loads(body.content)
        assert collection["type"] == "FeatureCollection"
        assert len(collection["features"]) == answer["scores"]["regions"]
    else:
        png = Image.open(io.BytesIO(body.content))
        assert png.mode == "RGBA" and png.size == (meta["preview"]["width"], meta["preview"]["height"])


def test_an_answer_below_the_presence_threshold_is_not_here_in_every_format(predictor, tmp_path):
    unsure = Predictor(predictor.model, predictor.tokenizer, presence_threshold=1.0)  # above any answer's max p
    with TestClient(create_app(unsure, "tiny", ServeSettings(workdir=tmp_path)), base_url=BASE) as client:
        assert client.get("/models").json()[0]["presence_threshold"] == 1.0
        meta = _upload(client, bands="4,3,2")
        answer = _ask(client, meta["id"], ["the water"]).json()["answers"][0]
        scores = answer["scores"]
        assert scores["target_fraction"] > 0 and scores["max_probability"] < 1.0  # the model did mark pixels
        assert scores["present"] is False and scores["regions"] == 0
        assert json.loads(client.get(answer["downloads"]["geojson"]).content)["features"] == []
        with rasterio.MemoryFile(client.get(answer["downloads"]["geotiff"]).content) as mem, mem.open() as m:
            assert m.read(1).max() == 0
        png = np.asarray(Image.open(io.BytesIO(client.get(answer["downloads"]["png"]).content)))
        assert png[..., 3].max() == 0  # nothing drawn on the map
        with rasterio.MemoryFile(client.get(answer["downloads"]["probabilities"]).content) as mem, mem.open() as m:
            assert np.nanmax(m.read(1)) == pytest.approx(scores["max_probability"], abs=0.02)  # kept as they are


def test_second_question_reuses_cached_features(client):
    meta = _upload(client)
    first = _ask(client, meta["id"], "where is the river?").json()
    second = _ask(client, meta["id"], ["where is the river?", "the fields"]).json()
    assert not first["cached_features"] and second["cached_features"]
    assert second["answers"][0]["scores"] == first["answers"][0]["scores"]  # same features, same answer
    history = client.get(f"/images/{meta['id']}/answers").json()
    assert [a["question"] for a in history] == ["where is the river?", "where is the river?", "the fields"]
    assert [a["number"] for a in history] == [1, 2, 3]
    assert client.get("/health").json()["cache"]["hits"] >= 1


def test_bad_questions_give_422(make_client):
    client = make_client(max_questions=2)
    image_id = _upload(client)["id"]
    cases = {
        "the question is empty": {"questions": ["   "]},
        "question 2: the question is empty": {"questions": ["ok", ""]},
        "the question is 5000 characters long; this server allows at most 1000": {"questions": ["x" * 5000]},
        "at most 2": {"questions": ["a", "b", "c"]},
        "no question given": {"questions": []},
        "format": {"questions": ["a"], "format": "shapefile"},
        "questions: Field required": {"question": "a"},
    }
    for message, body in cases.items():
        r = client.post(f"/images/{image_id}/ask", json=body)
        assert r.status_code == 422 and message in r.json()["detail"], (body, r.text)
    assert client.get(f"/images/{image_id}/answers").json() == []


def test_unknown_ids_give_404(client):
    assert client.get("/images/nope").status_code == 404
    assert client.delete("/images/nope").status_code == 404
    assert _ask(client, "nope", ["a"]).status_code == 404
    image_id = _upload(client)["id"]
    r = client.get(f"/images/{image_id}/answers/7/png")
    assert r.status_code == 404 and "no answer 7" in r.json()["detail"]


def test_delete_forgets_files_answers_and_features(client):
    image_id = _upload(client)["id"]
    _ask(client, image_id, "the roads")
    engine = client.app.state.engine
    folder = client.app.state.store.root / image_id
    assert image_id in engine.cache and folder.is_dir()
    assert client.delete(f"/images/{image_id}").status_code == 204
    assert image_id not in engine.cache and not folder.exists()
    assert client.get(f"/images/{image_id}").status_code == 404 and client.get("/images").json() == []


def test_store_limit_gives_409(make_client):
    client = make_client(max_images=1)
    _upload(client)
    with open(_raster("naip_rgbn_2019.tif"), "rb") as f:
        r = client.post("/images", files={"file": ("b.tif", f, "image/tiff")})
    assert r.status_code == 409 and "delete some first" in r.json()["detail"]


def _block_model(client: TestClient) -> threading.Event:
    """Occupy the model thread until the returned event is set."""
    release = threading.Event()
    app = client.app
    assert isinstance(app, FastAPI)
    app.state.engine.queue.submit(lambda: release.wait(30))
    return release


def test_full_queue_gives_503_with_retry_after(make_client):
    client = make_client(max_queue=0)
    image_id = _upload(client)["id"]
    release = _block_model(client)
    try:
        r = _ask(client, image_id, ["the roads"])
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "busy" in r.json()["detail"]
    finally:
        release.set()
    # The blocking job ends on its own thread: wait for its slot to free (a race otherwise) and answer.
    app = client.app
    assert isinstance(app, FastAPI)
    deadline = time.monotonic() + 30
    while app.state.engine.queue.outstanding and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _ask(client, image_id, ["the roads"]).status_code == 200


def test_request_timeout_gives_504_and_frees_the_slot(make_client):
    client = make_client(request_timeout_s=0.3, max_queue=1)
    image_id = _upload(client)["id"]
    release = _block_model(client)
    try:
        r = _ask(client, image_id, ["the roads"])
        assert r.status_code == 504 and "0.3 s" in r.json()["detail"]
        assert client.app.state.engine.queue.outstanding == 1  # only the blocking job is left
    finally:
        release.set()


def test_queue_is_bounded_and_serial():
    queue = ModelQueue(max_queue=1, timeout_s=5)
    release, running = threading.Event(), []
    first = queue.submit(lambda: (running.append(1), release.wait(5)))
    second = queue.submit(lambda: len(running))
    with pytest.raises(QueueFull) as info:
        queue.submit(lambda: None)
    assert info.value.retry_after >= 1
    release.set()
    assert first.result() and second.result() == 1 and queue.outstanding == 0
    queue.shutdown()


def test_feature_cache_evicts_least_recently_used(predictor):
    canvases = [np.full((256, 256, 3), v, np.uint8) for v in (0, 100, 200)]
    predictors = []
    for canvas in canvases:
        p = Predictor(predictor.model, predictor.tokenizer)
        p.set_image(canvas)
        predictors.append(p)
    size = predictor_bytes(predictors[0])
    assert size > 0
    cache = FeatureCache(budget_bytes=int(2.5 * size))
    cache.put("a", predictors[0])
    cache.put("b", predictors[1])
    assert cache.get("a") is predictors[0]  # a is now the most recent
    cache.put("c", predictors[2])
    assert "b" not in cache and "a" in cache and "c" in cache
    assert not FeatureCache(budget_bytes=size // 2).put("x", predictors[0])  # larger than the budget


def test_health_models_docs_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue"]["capacity"] == 9
    model = client.get("/models").json()[0]
    assert model["name"] == "tiny" and model["image_size"] == 256 and model["parameters"] > 0
    assert model["presence_threshold"] is None  # the tiny model has none: the official rule alone
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/images", "/images/{image_id}/ask", "/images/{image_id}/answers/{number}/{fmt}"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in client.get("/static/app.js").text.replace("http://HOST", "")  # no CDN, no remote URL


def test_docs_reference_only_local_assets(client):
    html = client.get("/docs").text
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(refs) == 3 and all(ref.startswith("/static/") for ref in refs), refs
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200 and len(r.content) > 500, ref
    assert "//" not in html.replace("<!doctype html>", "") and "http" not in client.get("/static/docs.js").text
    assert client.get("/redoc").status_code == 404  # ReDoc is not vendored: no page that stays blank offline
    assert client.get("/openapi.json").status_code == 200


def test_uploads_are_removed_on_shutdown(predictor, tmp_path):
    app = create_app(predictor, "tiny", ServeSettings(workdir=tmp_path))
    with TestClient(app, base_url=BASE) as client:
        _upload(client)
        assert any(app.state.store.root.rglob("raster.tif"))
    assert not app.state.store.root.exists()


def test_serve_command_reports_user_errors(tmp_path):
    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["--max-upload-mb", "0"])
    assert result.exit_code == 2 and "--max-upload-mb must be positive" in result.output
