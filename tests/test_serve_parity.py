"""`segearth serve` and `segearth predict` give the same answer: same mask pixel for pixel, same polygons.

Both load the tiny checkpoint of conftest; the CLI writes its files, the server is asked the same
question about the uploaded raster and every file the CLI writes is downloaded and compared.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from segearth.api import load_predictor
from segearth.cli import app as cli
from segearth.serve import ServeSettings, create_app

from test_serve import BASE, _raster

QUESTION = "the buildings"


def _cli(src: Path, checkpoint: Path, out: Path, *extra: str) -> dict[str, Path]:
    result = CliRunner().invoke(cli, ["predict", str(src), QUESTION, "-m", str(checkpoint), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    endings = {"_mask.tif": "geotiff", "_prob.tif": "probabilities", ".geojson": "geojson", ".gpkg": "gpkg",
               "_preview.png": "preview"}
    return {kind: p for p in out.iterdir() for end, kind in endings.items() if p.name.endswith(end)}


@pytest.mark.parametrize("name, bands", [("neon_rgb_nodata255.tif", None), ("naip_rgbn_2019.tif", "4,3,2")])
def test_server_answer_is_the_cli_answer(checkpoint, tmp_path, name, bands):
    src = _raster(name)
    extra = ["--bands", bands] if bands else []
    masks = _cli(src, checkpoint, tmp_path / "mask", *extra)
    probs = _cli(src, checkpoint, tmp_path / "prob", "--probabilities", *extra)
    assert set(masks) == {"geotiff", "geojson", "gpkg", "preview"} and "probabilities" in probs

    predictor, model_name = load_predictor(checkpoint)
    with TestClient(create_app(predictor, model_name, ServeSettings(workdir=tmp_path)), base_url=BASE) as client:
        with open(src, "rb") as f:
            meta = client.post("/images", files={"file": (name, f, "image/tiff")},
                               params={"bands": bands} if bands else {}).json()
        answer = client.post(f"/images/{meta['id']}/ask", json={"questions": [QUESTION]}).json()["answers"][0]
        got = {fmt: client.get(url) for fmt, url in answer["downloads"].items()}
    assert all(r.status_code == 200 for r in got.values()), {k: r.text for k, r in got.items() if r.status_code != 200}
    assert set(got) == {"geotiff", "probabilities", "geojson", "gpkg", "png", "preview"}

    with rasterio.MemoryFile(got["geotiff"].content) as mem, mem.open() as served, \
            rasterio.open(masks["geotiff"]) as ref:
        assert (served.crs, served.transform, served.shape) == (ref.crs, ref.transform, ref.shape)
        mask = served.read(1)
        np.testing.assert_array_equal(mask, ref.read(1))  # pixel for pixel
        np.testing.assert_array_equal(served.dataset_mask(), ref.dataset_mask())  # same nodata
    assert 0 < (mask == 255).sum() < mask.size  # a real answer, not an empty or full mask
    with rasterio.MemoryFile(got["probabilities"].content) as mem, mem.open() as served, \
            rasterio.open(probs["probabilities"]) as ref:
        np.testing.assert_array_equal(served.read(1), ref.read(1))  # NaN at the same places too

    served_geojson = json.loads(got["geojson"].content)
    ref_geojson = json.loads(masks["geojson"].read_text())
    assert len(served_geojson["features"]) == len(ref_geojson["features"]) == answer["scores"]["regions"] > 0
    assert [f["geometry"] for f in served_geojson["features"]] == [f["geometry"] for f in ref_geojson["features"]]
    (tmp_path / "served.gpkg").write_bytes(got["gpkg"].content)
    served_info, ref_info = pyogrio.read_info(tmp_path / "served.gpkg"), pyogrio.read_info(masks["gpkg"])
    assert served_info["features"] == ref_info["features"] == answer["scores"]["regions"]
    assert served_info["crs"] == ref_info["crs"]
    preview = np.asarray(Image.open(io.BytesIO(got["preview"].content)))
    assert preview.shape == np.asarray(Image.open(masks["preview"])).shape
    with rasterio.open(masks["geotiff"]) as ref:
        valid = ref.dataset_mask() > 0
        assert answer["scores"]["target_fraction"] == pytest.approx((ref.read(1)[valid] == 255).mean(), abs=0.02)
