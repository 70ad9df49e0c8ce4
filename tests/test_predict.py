"""Predictor caching and `segearth predict` on real GeoTIFFs with the tiny random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from typer.testing import CliRunner

from segearth import SegEarthR1, small_config
from segearth.cli import app
from segearth.predict import PredictOptions, predict_raster
from segearth.predictor import Predictor
from segearth.tokenizer import byte_level_tokenizer

from conftest import SHARED, require_shared

GEOTIFF = SHARED / "data" / "geotiff"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(SegEarthR1(small_config()).eval(), byte_level_tokenizer())


def _raster(name):
    return require_shared(GEOTIFF / name)


def test_cached_prediction_equals_the_full_forward(predictor):
    canvas = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    predictor.set_image(canvas)
    for q in ("where could a boat travel?", "the roads", "which buildings are tallest?"):
        cached, full = predictor.predict(q).low_res_logits, predictor.predict_uncached(q).low_res_logits
        assert cached.shape == (64, 64)
        assert torch.allclose(cached, full, atol=1e-5)
    # a second image replaces the cache
    predictor.set_image(255 - canvas)
    cached, uncached = predictor.predict("the roads"), predictor.predict_uncached("the roads")
    assert torch.allclose(cached.logits, uncached.logits, atol=1e-5)


def test_predictor_input_errors(predictor):
    with pytest.raises(ValueError, match=r"RGB image of shape \[H, W, 3\]"):
        predictor.set_image(np.zeros((100, 100), np.uint8))
    predictor.set_image(np.zeros((100, 300, 3), np.uint8))
    with pytest.raises(ValueError, match="question is empty"):
        predictor.predict("   ")
    with pytest.raises(ValueError, match="tokens long; this model's context allows at most"):
        predictor.predict("x" * 5000)


@pytest.mark.parametrize("mode", ["scene", "tiles"])
def test_outputs_are_georeferenced_like_the_input(predictor, tmp_path, mode):
    src = _raster("naip_rgbn_2019.tif")
    opts = PredictOptions(out_dir=tmp_path, mode=mode, bands=(4, 3, 2), tile_size=400, overlap=64)
    result = predict_raster(predictor, src, ["the water", "the fields"], opts, "tiny")
    assert len(result.results) == 2
    with rasterio.open(src) as ref:
        bounds, crs, transform, shape = ref.bounds, ref.crs, ref.transform, (ref.height, ref.width)
    for r in result.results:
        with rasterio.open(r.mask) as m:
            assert m.crs == crs and m.transform == transform and (m.height, m.width) == shape
            assert m.dtypes[0] == "uint8" and set(np.unique(m.read(1))) <= {0, 255}
            assert m.tags()["question"] == r.question
        collection = json.loads(r.paths["geojson"].read_text())
        assert collection["type"] == "FeatureCollection"
        # GeoJSON is WGS84: every vertex inside the raster footprint reprojected to lon/lat
        from rasterio.warp import transform_bounds

        west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
        for feature in collection["features"]:
            assert feature["properties"]["question"] == r.question and feature["properties"]["model"] == "tiny"
            assert 0.0 <= feature["properties"]["mean_probability"] <= 1.0
            xs, ys = zip(*[pt for ring in feature["geometry"]["coordinates"] for pt in ring], strict=True)
            assert west - 1e-6 <= min(xs) and max(xs) <= east + 1e-6
            assert south - 1e-6 <= min(ys) and max(ys) <= north + 1e-6
        import pyogrio

        gdf_info = pyogrio.read_info(r.paths["gpkg"])
        assert gdf_info["features"] == len(collection["features"]) and r.polygons == gdf_info["features"]
        assert r.paths["preview"].stat().st_size > 0


def test_nodata_is_never_inside_the_mask(predictor, tmp_path):
    src = _raster("landsat_int16_nodata_epsg4326.tif")
    opts = PredictOptions(out_dir=tmp_path, probabilities=False)
    result = predict_raster(predictor, src, ["the river"], opts, "tiny")
    with rasterio.open(src) as ref:
        nodata = ref.read(1) == ref.nodata
    with rasterio.open(result.results[0].mask) as m:
        mask = m.read(1)
        dataset_mask = m.dataset_mask()
    assert nodata.any() and not mask[nodata].any()
    assert (dataset_mask[nodata] == 0).all()


def test_tiles_mode_on_a_raster_larger_than_the_tiles(predictor, tmp_path):
    path = tmp_path / "big.tif"
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, size=(1, 700, 900), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=900, height=700, count=1, dtype="uint16",
                       crs="EPSG:32631", transform=from_origin(500000, 5000000, 2.0, 2.0), nodata=0) as dst:
        dst.write(data)
    opts = PredictOptions(out_dir=tmp_path / "out", mode="tiles", tile_size=256, overlap=32, probabilities=True)
    (tmp_path / "out").mkdir()
    result = predict_raster(predictor, path, ["the roads"], opts, "tiny")
    with rasterio.open(result.results[0].mask) as m:
        probs = m.read(1)
        assert m.dtypes[0] == "float32" and probs.shape == (700, 900)
    finite = probs[np.isfinite(probs)]
    assert finite.size > 0.99 * probs.size and finite.min() >= 0 and finite.max() <= 1


def test_cli_single_raster_and_refusal_to_overwrite(checkpoint, tmp_path):
    src = _raster("spacenet_rgb_uint8.tif")
    args = ["predict", str(src), "the buildings", "-m", str(checkpoint), "--out", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(list(tmp_path.glob("*_mask.tif"))) == 1 and len(list(tmp_path.glob("*.geojson"))) == 1
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output and "Traceback" not in again.output
    assert CliRunner().invoke(app, args + ["--overwrite"]).exit_code == 0


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("spacenet_sar_complex64.tif", [], "complex"),
        ("naip_rgbn_2019.tif", ["--bands", "5,3,2"], "band"),
        ("does_not_exist.tif", [], "does_not_exist.tif"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(checkpoint, tmp_path, name, extra, message):
    # The real rasters come from ../shared (skipped without it, a failure under --require-shared/CI)
    src = GEOTIFF / name if name == "does_not_exist.tif" else _raster(name)
    args = ["predict", str(src), "the water", "-m", str(checkpoint), "--out", str(tmp_path), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_empty_question_and_unwritable_folder(checkpoint, tmp_path):
    src = _raster("spacenet_rgb_uint8.tif")
    result = CliRunner().invoke(app, ["predict", str(src), "  ", "-m", str(checkpoint), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "question is empty" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = ["predict", str(src), "water", "-m", str(checkpoint), "--out", str(blocker / "sub")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "output folder" in result.output


def test_cli_manifest_batch_reports_failures_and_continues(checkpoint, tmp_path):
    good = _raster("spacenet_rgb_uint8.tif")
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"image,question,output\n{good},the roads,roads\n{GEOTIFF / 'missing.tif'},the water,\n"
                        f"{good},the trees,\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(manifest), "-m", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "missing.tif" in result.output and "1 item(s) failed" in result.output
    assert (out / "roads_mask.tif").is_file()
    assert len(list(out.glob("*_mask.tif"))) == 2


def test_cli_same_question_twice_is_answered_once(checkpoint, tmp_path):
    src = _raster("spacenet_rgb_uint8.tif")
    result = CliRunner().invoke(app, ["predict", str(src), "the roads", "the roads", "-m", str(checkpoint),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*_mask.tif"))) == 1


def _run_manifest_with_output(checkpoint, tmp_path, output):
    """`segearth predict jobs.csv` with one row whose output name is ``output``; returns (result, --out)."""
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"image,question,output\n{_raster('spacenet_rgb_uint8.tif')},the roads,{output}\n")
    out = tmp_path / "out"
    return CliRunner().invoke(app, ["predict", str(manifest), "-m", str(checkpoint), "--out", str(out)]), out


@pytest.mark.parametrize("output", ["../escaped", "/tmp/segearth-escaped", "a/../../escaped"])
def test_cli_manifest_outputs_stay_inside_out(checkpoint, tmp_path, output):
    result, _ = _run_manifest_with_output(checkpoint, tmp_path, output)
    assert result.exit_code == 2, result.output
    assert "line 2" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.rglob("*escaped*"))


def test_cli_manifest_output_in_a_new_subfolder(checkpoint, tmp_path):
    result, out = _run_manifest_with_output(checkpoint, tmp_path, "nosuchdir/roads")
    assert result.exit_code == 0, result.output
    assert (out / "nosuchdir" / "roads_mask.tif").is_file()


def test_cli_full_disk_is_one_line_and_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    import errno

    import segearth.predict as predict_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predict_module, "write_geojson", full)
    src = _raster("spacenet_rgb_uint8.tif")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(src), "the roads", "-m", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert [p for p in out.rglob("*")] == []


def test_cli_decompression_bomb_is_refused_from_the_header(checkpoint, tmp_path):
    import time

    bomb = tmp_path / "bomb.tif"
    with rasterio.open(bomb, "w", driver="GTiff", width=100_000, height=100_000, count=1, dtype="uint8",
                       tiled=True, compress="deflate", sparse_ok=True, BIGTIFF="YES") as dst:
        dst.write(np.full((1, 16, 16), 7, np.uint8), window=rasterio.windows.Window(0, 0, 16, 16))
    assert bomb.stat().st_size < 5_000_000
    start = time.monotonic()
    result = CliRunner().invoke(app, ["predict", str(bomb), "the water", "-m", str(checkpoint), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "100000x100000" in result.output.replace(" ", "") or "10,000,000,000" in result.output
    assert time.monotonic() - start < 30  # header only: no pixel is read (the limit is generous for busy CI)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_presence_threshold_answers_not_here(checkpoint, tmp_path):
    src = _raster("spacenet_rgb_uint8.tif")
    masks = {}
    for threshold in ("0", "1"):
        out = tmp_path / threshold
        args = ["predict", str(src), "the buildings", "-m", str(checkpoint), "--out", str(out),
                "--presence-threshold", threshold]
        result = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
        assert result.exit_code == 0, result.output
        (path,) = out.glob("*_mask.tif")
        with rasterio.open(path) as m:
            masks[threshold] = m.read(1)
        assert ("not here" in result.output) == (threshold == "1")
    assert (masks["0"] == 255).any() and not masks["1"].any()  # the model marked pixels; below 1 it is not sure
    wide = CliRunner(env={"COLUMNS": "200"})
    refused = wide.invoke(app, ["predict", str(src), "q", "--presence-threshold", "1.5"])
    assert refused.exit_code == 2 and "--presence-threshold" in refused.output
    assert "less than or equal to 1" in refused.output


def test_cli_typed_choices_are_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["predict", "x.tif", "q", "--mode", "pyramid"])
    assert result.exit_code == 2 and "pyramid" in result.output
    result = CliRunner().invoke(app, ["predict", "x.tif", "q", "--dtype", "int4"])
    assert result.exit_code == 2 and "int4" in result.output


def test_batched_questions_equal_one_by_one(predictor):
    image = (np.random.default_rng(3).random((120, 260, 3)) * 255).astype(np.uint8)
    questions = ["where could a boat travel?", "the roads", "x", "which buildings are tallest, and why?"]
    predictor.set_image(image)
    batched = predictor.predict_batch(questions)
    for q, b in zip(questions, batched, strict=True):
        single = predictor.predict(q)
        full = predictor.predict_uncached(q)
        assert b.question == q
        assert torch.allclose(b.low_res_logits, full.low_res_logits, atol=1e-5)
        assert torch.allclose(single.low_res_logits, full.low_res_logits, atol=1e-5)
    # a new image drops the prefix cache of the old one
    predictor.set_image(255 - image)
    assert torch.allclose(predictor.predict_batch(["the roads", "x"])[1].low_res_logits,
                          predictor.predict_uncached("x").low_res_logits, atol=1e-5)
