"""`segearth serve` errors: atomic renders, remembered failures, and no server path in any error body."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import segearth.predict as predict_module
from segearth.serve import ServeSettings, create_app
from segearth.serve.errors import path_scrubber

from test_serve import BASE, _ask, _raster, _upload, client, make_client, predictor  # noqa: F401 (fixtures)
from test_serve_limits import sparse_geotiff


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failed_render_is_never_served_and_is_remembered(client, monkeypatch):
    image_id = _upload(client)["id"]
    answer = _ask(client, image_id, ["the roads"], "png").json()["answers"][0]
    folder = client.app.state.store.root / image_id / "answers" / "1"
    calls = []

    def broken(path, *args, **kwargs):
        calls.append(path)
        Path(path).write_bytes(b"II*\x00 half a GeoTIFF")
        raise OSError(f"No space left on device: '{path}'")

    monkeypatch.setattr(predict_module, "write_mask_geotiff", broken)
    for _ in range(2):
        r = client.get(answer["downloads"]["geotiff"])
        assert r.status_code == 500
        assert r.json()["detail"] == "rendering the geotiff of answer 1 failed; ask the question again"
    assert len(calls) == 1 and calls[0].parent == folder and calls[0].name != "mask.tif"
    assert _files(folder) == ["logits.npy", "mask.geojson", "mask.png"]  # no partial file anywhere
    assert client.get(answer["downloads"]["png"]).status_code == 200


def test_render_interrupted_at_shutdown_leaves_nothing_and_is_not_remembered(client):
    image_id = _upload(client)["id"]
    answer = _ask(client, image_id, ["the roads"], "png").json()["answers"][0]
    engine = client.app.state.engine
    engine.closing.set()
    r = client.get(answer["downloads"]["geotiff"])
    assert r.status_code == 503 and r.json()["detail"] == "the server is shutting down"
    assert "mask.tif" not in _files(client.app.state.store.root / image_id / "answers" / "1")
    engine.closing.clear()
    r = client.get(answer["downloads"]["geotiff"])
    assert r.status_code == 200 and r.content.startswith(b"II*\x00")


def test_scrubber_removes_paths_inside_the_given_folders():
    scrub = path_scrubber([Path("/srv/work"), Path("/tmp")])
    text = "'/srv/work/ab12/raster.tif': not a raster; see /tmp/x.log, /srv/other stays"
    assert scrub.sub("<server file>", text) == "'<server file>': not a raster; see <server file>, /srv/other stays"


def test_no_server_path_in_any_error_body(predictor, tmp_path, monkeypatch):
    app = create_app(predictor, "tiny", ServeSettings(workdir=tmp_path, max_upload_mb=5, max_body_kb=8))
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as client:
        root = app.state.store.root
        good = _upload(client)["id"]
        answer = _ask(client, good, ["the water"], "png").json()["answers"][0]
        responses = [
            client.post("/images", files={"file": ("x.tif", b"II*\x00" + b"\x07" * 64, "image/tiff")}),
            client.post("/images", content=b"hello"),
            client.post("/images", content=b""),
            client.post("/images", content=b"\x89PNG" + bytes(6 * 2**20)),
            client.post("/images", content=sparse_geotiff(tmp_path / "bomb.tif").read_bytes()),
            client.post("/images", content=b"II*\x00", params={"bands": "0"}),
            client.get("/images/nope"),
            client.get(f"/images/{good}/answers/9/png"),
            client.get(f"/images/{good}/answers/1/shapefile"),
            _ask(client, good, [""]),
            _ask(client, good, ["x" * 2000]),
            client.post(f"/images/{good}/ask", content=json.dumps({"questions": ["a" * 9000]})),
            client.post(f"/images/{good}/ask", content=b"{not json", headers={"Content-Type": "application/json"}),
        ]
        with open(_raster("spacenet_sar_complex64.tif"), "rb") as f:
            responses.append(client.post("/images", files={"file": ("sar.tif", f, "image/tiff")}))

        def broken(path, *args, **kwargs):
            raise OSError(f"cannot write {path}")

        monkeypatch.setattr(predict_module, "write_mask_geotiff", broken)
        responses.append(client.get(answer["downloads"]["geotiff"]))

        def crash(question):
            raise RuntimeError(f"unexpected trouble in {root / good / 'canvas.npy'}")

        monkeypatch.setattr(app.state.engine, "count_tokens", crash)
        responses.append(_ask(client, good, ["the roads"]))

    statuses = [r.status_code for r in responses]
    assert all(400 <= s < 600 for s in statuses), statuses
    assert {404, 413, 422, 500} <= set(statuses)
    assert responses[-1].json()["detail"] == "internal server error (the server log has the details)"
    for r in responses:
        body = r.text
        assert str(tmp_path) not in body and str(root) not in body and "segearth-serve-" not in body, body
        assert tempfile.gettempdir() + "/" not in body, body
        assert isinstance(r.json()["detail"], str) and r.json()["detail"], body


@pytest.mark.parametrize("fmt", ["png", "geojson"])
def test_renders_leave_no_temporary_files(client, fmt):
    image_id = _upload(client)["id"]
    answer = _ask(client, image_id, ["the fields"], fmt).json()["answers"][0]
    assert client.get(answer["downloads"]["geotiff"]).status_code == 200
    folder = client.app.state.store.root / image_id / "answers" / "1"
    assert _files(folder) == sorted(["logits.npy", "mask.geojson", "mask.tif"] + (["mask.png"] if fmt == "png" else []))
