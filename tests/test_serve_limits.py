"""`segearth serve` refuses oversized input before doing work: questions, bodies, answers, pixels, disk."""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import rasterio
from rasterio.transform import from_origin

from test_serve import _ask, _raster, _upload, client, make_client, predictor  # noqa: F401 (fixtures)


def _image_folders(client) -> list[str]:
    return [p.name for p in client.app.state.store.root.iterdir() if p.is_dir()]


def sparse_geotiff(path: Path, size: int = 100_000) -> Path:
    """A tiny file that declares size² pixels: tiled, compressed, no tile written."""
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, crs="EPSG:3857",
                       transform=from_origin(500_000, 4_000_000, 10, 10)) as dst:
        dst.update_tags(kind="bomb")
    return path


def bomb_png(path: Path, size: int) -> Path:
    """A valid 1-bit size² PNG of zeros: a few hundred KB that decode to size² pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = bytes(1 + (size + 7) // 8) * 1000
    z = zlib.compressobj(1)
    data = b"".join(z.compress(rows) for _ in range(size // 1000)) + z.flush()
    header = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_question_limits_are_checked_before_the_model(make_client):
    client = make_client(max_question_tokens=20)
    image_id = _upload(client)["id"]
    queue = client.app.state.engine.queue
    r = _ask(client, image_id, ["x" * 1001])
    assert r.status_code == 422 and r.json()["detail"] == (
        "the question is 1001 characters long; this server allows at most 1000")
    r = _ask(client, image_id, ["ok", "y" * 30])  # the byte-level tokenizer: 30 characters -> 32 tokens
    assert r.status_code == 422 and r.json()["detail"] == (
        "question 2: the question is 32 tokens long; this server allows at most 20")
    assert queue.completed == 0  # nothing reached the model
    assert _ask(client, image_id, ["y" * 18]).status_code == 200
    assert client.get("/health").json()["limits"]["max_question_tokens"] == 20


def test_huge_json_body_gets_413_before_parsing(client):
    image_id = _upload(client)["id"]
    big = json.dumps({"questions": ["a" * 70_000]}).encode()
    headers = {"Content-Type": "application/json"}
    r = client.post(f"/images/{image_id}/ask", content=big, headers=headers)
    assert r.status_code == 413 and r.json()["detail"] == "the request body is larger than the limit of 64 KB"
    r = client.post(f"/images/{image_id}/ask", content=iter([big[:40_000], big[40_000:]]), headers=headers)
    assert r.status_code == 413  # chunked: counted while streaming
    assert client.post("/images/nope/ask", content=big, headers=headers).status_code == 413  # before routing
    # Under the limit the body reaches the app (and the question limit answers).
    r = client.post(f"/images/{image_id}/ask", content=json.dumps({"questions": ["a" * 60_000]}), headers=headers)
    assert r.status_code == 422 and "60000 characters" in r.json()["detail"]
    assert client.app.state.engine.queue.completed == 0


def test_answers_per_image_are_bounded_oldest_dropped(make_client):
    client = make_client(max_answers=2, max_questions=2)
    image_id = _upload(client)["id"]
    for q in ("one", "two", "three"):
        assert _ask(client, image_id, [q]).status_code == 200
    history = client.get(f"/images/{image_id}/answers").json()
    assert [(a["number"], a["question"]) for a in history] == [(2, "two"), (3, "three")]
    r = client.get(f"/images/{image_id}/answers/1/geojson")
    assert r.status_code == 404 and "was dropped" in r.json()["detail"]
    answers = client.app.state.store.root / image_id / "answers"
    assert sorted(p.name for p in answers.iterdir()) == ["2", "3"]
    assert client.get(f"/images/{image_id}/answers/3/png").status_code == 200


def test_stored_question_text_is_capped(make_client):
    client = make_client(max_question_tokens=1000)
    image_id = _upload(client)["id"]
    question = "where " + "q" * 900 + "?"
    answer = _ask(client, image_id, [question], "geotiff").json()["answers"][0]
    assert answer["question"] == question  # the API keeps it whole
    with rasterio.MemoryFile(client.get(answer["url"]).content) as mem, mem.open() as m:
        tag = m.tags()["question"]
    assert len(tag) == 200 and tag.endswith("…") and question.startswith(tag[:-1])
    features = client.get(answer["downloads"]["geojson"]).json()["features"]
    assert features and all(len(f["properties"]["question"]) == 200 for f in features)


@pytest.mark.parametrize("kind", ["geotiff", "png"])
def test_pixel_bombs_are_refused_from_their_header(client, tmp_path, kind):
    path = sparse_geotiff(tmp_path / "bomb.tif") if kind == "geotiff" else bomb_png(tmp_path / "bomb.png", 40_000)
    assert path.stat().st_size < 2_000_000
    pixels = "10,000,000,000" if kind == "geotiff" else "1,600,000,000"
    start = time.monotonic()
    with open(path, "rb") as f:
        r = client.post("/images", files={"file": (path.name, f, "application/octet-stream")})
    assert time.monotonic() - start < 10
    assert r.status_code == 413 and f"{pixels} pixels" in r.json()["detail"]
    assert "at most 1,500,000,000" in r.json()["detail"]
    assert client.get("/images").json() == [] and _image_folders(client) == []


def test_work_folder_disk_budget_gives_409(make_client):
    size = _raster("naip_rgbn_2019.tif").stat().st_size
    probe = make_client()
    _upload(probe)
    kept = probe.app.state.store.disk_used()  # the upload plus its previews and model input, which count too
    client = make_client(max_disk_mb=(kept + size / 2) / 2**20)  # room for one upload, not two
    image_id = _upload(client)["id"]
    with open(_raster("naip_rgbn_2019.tif"), "rb") as f:
        r = client.post("/images", files={"file": ("b.tif", f, "image/tiff")})
    assert r.status_code == 409 and "work folder" in r.json()["detail"]
    with open(_raster("naip_rgbn_2019.tif"), "rb") as f:  # chunked: no Content-Length, stopped while streaming
        r = client.post("/images", content=iter([f.read()]), params={"filename": "c.tif"})
    assert r.status_code == 409 and "work folder" in r.json()["detail"]
    assert [m["id"] for m in client.get("/images").json()] == [image_id]
    assert client.delete(f"/images/{image_id}").status_code == 204
    _upload(client)  # room again


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 38_000)  # 1.44 Gpx: under the pixel limit


def test_slow_upload_is_killed_at_its_time_limit_while_questions_keep_answering(make_client, png_bomb):
    client = make_client(prepare_timeout_s=3)
    image_id = _upload(client)["id"]
    assert _ask(client, image_id, ["warm up"]).status_code == 200
    preparing = client.app.state.preparing
    outcome: dict = {}

    def upload_bomb() -> None:
        start = time.monotonic()
        with open(png_bomb, "rb") as f:
            outcome["response"] = client.post("/images", files={"file": ("bomb.png", f, "image/png")})
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=upload_bomb)
    thread.start()
    deadline = time.monotonic() + 5
    while preparing.outstanding == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert preparing.outstanding == 1  # the bomb is being decoded (1.44 Gpx: far more than 3 s)
    answered_meanwhile = []
    for i in range(3):
        start = time.monotonic()
        r = _ask(client, image_id, [f"the roads {i}"])
        assert r.status_code == 200, r.text
        if preparing.outstanding == 1:
            answered_meanwhile.append(time.monotonic() - start)
    thread.join(30)
    assert answered_meanwhile and max(answered_meanwhile) < 3
    r = outcome["response"]
    assert r.status_code == 422 and "longer than the limit of 3 s" in r.json()["detail"]
    assert outcome["seconds"] < 10
    assert [m["id"] for m in client.get("/images").json()] == [image_id]
    assert _image_folders(client) == [image_id]  # the bomb's folder is gone
