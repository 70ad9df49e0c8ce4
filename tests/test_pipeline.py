"""The raster pipeline end to end with a stub model whose answer is known: placement, names, safe writes.

The stub "model" marks the red pixels of whatever it is shown, so on a raster painted with an
asymmetric red pattern the right answer is that pattern — at full resolution, in the raster's CRS —
whatever the mode, tiling, letterbox or decimation in between.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import rasterio
import shapely
import torch
from PIL import Image
from rasterio.transform import from_origin
from shapely.geometry import box, shape

from segearth.api import SegEarth
from segearth.geo.letterbox import letterbox
from segearth.predict import PredictOptions, predict_raster
from segearth.predictor import Prediction

SIZE = 128  # the stub's canvas; its logits are 32² like a real model's S/4 grid
PIXEL = 2.0  # metres
ORIGIN = (500_000.0, 4_000_000.0)  # UTM 31N


class RedStub:
    """Answers "where is it red?" on its canvas at 1/4 resolution, like the real decoder's grid."""

    image_size = SIZE
    presence_threshold: float | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.canvas, self.box = letterbox(image, SIZE)

    def predict(self, question: str) -> Prediction:
        red = torch.from_numpy(self.canvas[..., 0].astype(np.float32))
        low = torch.nn.functional.avg_pool2d(red[None, None], 4)[0, 0]
        return Prediction(question, (low - 127.5) / 10.0, self.box)


# An asymmetric pattern on a non-square raster: an L (long arm on the left, foot to the right) and a
# small square near the top-right corner. Edges on multiples of 32 px, so every grid lines up.
HEIGHT, WIDTH = 384, 640
RECTS = [(32, 64, 320, 128), (256, 128, 320, 384), (64, 512, 128, 576)]  # (row0, col0, row1, col1)


def truth() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for r0, c0, r1, c1 in RECTS:
        mask[r0:r1, c0:c1] = True
    return mask


@pytest.fixture
def red_raster(tmp_path):
    path = tmp_path / "pattern.tif"
    rgb = np.full((3, HEIGHT, WIDTH), 60, np.uint8)
    rgb[0][truth()] = 230
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(*ORIGIN, PIXEL, PIXEL)) as dst:
        dst.write(rgb)
    return path


def interior(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels at least ``margin`` away from any edge of ``mask`` (where resampling cannot blur them)."""
    out = np.ones_like(mask)
    for dr in range(-margin, margin + 1):
        for dc in range(-margin, margin + 1):
            out &= np.roll(np.roll(mask, dr, 0), dc, 1) == mask
    return out


@pytest.mark.parametrize("mode, tile", [("scene", None), ("tiles", 256)])
def test_answer_lands_on_the_right_pixels_and_coordinates(red_raster, tmp_path, mode, tile):
    opts = PredictOptions(out_dir=tmp_path / "out", mode=mode, tile_size=tile, overlap=64)
    result = predict_raster(RedStub(), red_raster, ["the red L"], opts, "stub")
    (answer,) = result.results
    with rasterio.open(answer.mask) as m:
        got = m.read(1) == 255
        assert m.crs.to_epsg() == 32631 and m.transform == from_origin(*ORIGIN, PIXEL, PIXEL)
    expected = truth()
    # Pixel by pixel: exact away from the pattern's edges (scene mode sees a 5x-decimated overview).
    margin = 12 if mode == "scene" else 4
    keep = interior(expected, margin)
    assert keep.sum() > 0.8 * keep.size
    np.testing.assert_array_equal(got[keep], expected[keep])
    # Polygon by polygon, in the raster's CRS (GeoPackage): one region per connected part, in place.
    geoms = _gpkg_geometries(answer.paths["gpkg"])
    x0, y0 = ORIGIN
    parts = [
        box(x0 + c0 * PIXEL, y0 - r1 * PIXEL, x0 + c1 * PIXEL, y0 - r0 * PIXEL) for r0, c0, r1, c1 in RECTS
    ]
    l_shape, square = shapely.union(parts[0], parts[1]), parts[2]
    assert len(geoms) == 2
    # Scene mode sees the raster through 20-pixel logit cells (a 5x resize without antialiasing, as the
    # official preprocessing does, then the decoder's 1/4 grid): corners round and edges move by the
    # sampling phase, a few pixels. A placement error (a flip, a shift of a cell) moves a centroid by a
    # cell or more, so centroids must stay within 0.4 cell; tiles mode (8-pixel cells) within 2 pixels.
    cell = 4 * WIDTH / SIZE if mode == "scene" else 4 * tile / SIZE
    min_iou, max_shift = (0.8, 0.4 * cell * PIXEL) if mode == "scene" else (0.9, 2 * PIXEL)
    for want in (l_shape, square):
        best = max(geoms, key=lambda g: g.intersection(want).area)
        iou = best.intersection(want).area / best.union(want).area
        assert iou > min_iou, (mode, iou)
        assert best.centroid.distance(want.centroid) < max_shift, (mode, best.centroid, want.centroid)
    # GeoJSON in WGS84: the square's centroid, projected back, falls on the square.
    features = json.loads(answer.paths["geojson"].read_text())["features"]
    from rasterio.warp import transform_geom

    centroids = [shape(transform_geom("EPSG:4326", "EPSG:32631", f["geometry"])).centroid for f in features]
    assert any(square.contains(c) for c in centroids)


def _gpkg_geometries(path):
    from pyogrio.raw import read

    _, _, geometry, _ = read(path)
    return [shapely.from_wkb(g) for g in geometry]


def test_api_result_matches_the_written_mask(red_raster, tmp_path):
    model = SegEarth(RedStub(), "stub")
    for mode in ("scene", "tiles"):
        result = model.predict(red_raster, "the red L", mode=mode, tile_size=256, overlap=64)
        written = predict_raster(RedStub(), red_raster, ["the red L"],
                                 PredictOptions(out_dir=tmp_path / mode, mode=mode, tile_size=256, overlap=64), "stub")
        with rasterio.open(written.results[0].mask) as m:
            np.testing.assert_array_equal(result.mask, m.read(1) == 255)
        assert result.crs.to_epsg() == 32631 and result.transform == from_origin(*ORIGIN, PIXEL, PIXEL)
        assert result.scores.target_fraction == pytest.approx(result.mask.mean())
        assert len(result.regions) == 2 and result.regions[0]["properties"]["area_m2"] > 0


def test_same_names_different_inputs_never_collide(tmp_path):
    """Long, similar names in one folder: each image keeps its own (correct) outputs, with --overwrite too."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    paths = []
    for i, red_rows in enumerate([(0, 64), (64, 128)]):
        rgb = np.full((3, 128, 128), 40, np.uint8)
        rgb[0, red_rows[0]:red_rows[1]] = 240
        path = folder / f"sentinel2_20230601_tile_000{i + 1}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8",
                           crs="EPSG:32631", transform=from_origin(0, 0, 10, 10)) as dst:
            dst.write(rgb)
        paths.append(path)
    out = tmp_path / "out"
    for overwrite in (False, True):
        masks = {}
        for path in paths:
            opts = PredictOptions(out_dir=out, overwrite=overwrite)
            result = predict_raster(RedStub(), path, ["red", "red"], opts, "stub")
            assert len(result.results) == 1  # the repeated question was answered once
            masks[path.name] = result.results[0].mask
        assert len({m.name for m in masks.values()}) == 2
        for path, (r0, r1) in zip(paths, [(0, 64), (64, 128)], strict=True):
            with rasterio.open(masks[path.name]) as m:
                rows = np.flatnonzero((m.read(1) == 255).all(axis=1))
            assert rows.min() <= r0 + 2 and rows.max() >= r1 - 3 and len(rows) < 70, path.name
        assert len(list(out.glob("*_mask.tif"))) == 2


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_nothing_and_a_rerun_works(red_raster, tmp_path, monkeypatch, failure):
    import segearth.predict as predict_module

    real = predict_module.write_preview_png

    def broken(*args, **kwargs):
        raise failure

    out = tmp_path / "out"
    monkeypatch.setattr(predict_module, "write_preview_png", broken)
    with pytest.raises((OSError, ValueError, KeyboardInterrupt)) as info:
        predict_raster(RedStub(), red_raster, ["the red L"], PredictOptions(out_dir=out), "stub")
    if isinstance(failure, OSError):
        assert "No space left" in str(info.value) and "\n" not in str(info.value)
    assert _files(out) == []  # the mask and polygons written before the failure are gone too
    assert not any(p.name.startswith(".") for p in out.iterdir())
    monkeypatch.setattr(predict_module, "write_preview_png", real)
    result = predict_raster(RedStub(), red_raster, ["the red L"], PredictOptions(out_dir=out), "stub")
    assert len(_files(out)) == 4 and result.results[0].mask.is_file()


def test_skip_existing_resumes_without_redoing(red_raster, tmp_path):
    out = tmp_path / "out"
    first = predict_raster(RedStub(), red_raster, ["a"], PredictOptions(out_dir=out), "stub")
    stamp = first.results[0].mask.stat().st_mtime_ns
    again = predict_raster(RedStub(), red_raster, ["a", "b"], PredictOptions(out_dir=out, skip_existing=True), "stub")
    by_question = {r.question: r for r in again.results}
    assert by_question["a"].skipped and not by_question["b"].skipped
    assert first.results[0].mask.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="already exists"):
        predict_raster(RedStub(), red_raster, ["a"], PredictOptions(out_dir=out), "stub")


def test_nan_logits_are_an_error_not_an_empty_mask(tmp_path):
    from segearth import SegEarthR1, small_config
    from segearth.predictor import NonFiniteOutputError, Predictor
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    model = SegEarthR1(small_config()).eval()
    with torch.no_grad():
        next(model.mask_decoder.parameters()).fill_(float("nan"))
    predictor = Predictor(model, byte_level_tokenizer())
    predictor.set_image(np.zeros((50, 80, 3), np.uint8))
    with pytest.raises(NonFiniteOutputError, match="non-finite"):
        predictor.predict("the water")


def test_predictor_takes_any_image_and_answers_on_its_grid():
    from segearth import SegEarthR1, small_config
    from segearth.predictor import Predictor
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    predictor = Predictor(SegEarthR1(small_config()).eval(), byte_level_tokenizer())
    image = (np.random.default_rng(0).random((90, 200, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    pred = predictor.predict("the roads")
    assert pred.low_res_logits.shape == (64, 64) and pred.logits.shape == (90, 200)
    assert pred.mask.shape == (90, 200) and pred.mask.dtype == bool
    probs = pred.probabilities
    assert np.all((probs >= 0) & (probs <= 1))
    assert pred.scores.target_fraction == pytest.approx(pred.mask.mean())
    assert pred.scores.max_probability == pytest.approx(float(probs.max()), abs=1e-6)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        predictor.set_image(np.zeros((90, 200), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predictor.set_image(np.zeros((90, 200, 3), np.float32))


def test_result_show_draws_the_overlay(red_raster):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = SegEarth(RedStub(), "stub").predict(red_raster, "the red L")
    ax = result.show()
    overlay = ax.images[-1].get_array()
    # the overlay is transparent off the answer and coloured on it, on the preview's grid
    assert overlay.shape[:2] == result.preview_image.shape[:2]
    assert overlay[100, 90, 3] > 0 and overlay[10, 600, 3] == 0 and overlay[100, 300, 3] == 0
    assert "the red L" in ax.get_title()
    plt.close(ax.figure)


class UnsureRedStub(RedStub):
    """The red answer with a presence threshold above its highest probability: "not here"."""

    presence_threshold = 1.0  # the red L's highest probability is sigmoid(12.75) < 1


@pytest.mark.parametrize("mode", ["scene", "tiles"])
def test_an_answer_below_the_presence_threshold_is_not_here_in_every_output(red_raster, tmp_path, mode):
    opts = PredictOptions(out_dir=tmp_path / "out", mode=mode, tile_size=256, overlap=64)
    (answer,) = predict_raster(UnsureRedStub(), red_raster, ["the red L"], opts, "stub").results
    assert not answer.present and answer.polygons == 0
    assert answer.scores.target_fraction > 0.1  # the model's own answer, still reported
    with rasterio.open(answer.mask) as m:
        mask = m.read(1)
        assert m.tags()["answer"].startswith("not here: max probability 1.00 is below")
    assert mask.max() == 0 and mask.min() == 0  # empty, and every pixel valid (not turned into nodata)
    assert json.loads(answer.paths["geojson"].read_text())["features"] == []
    assert _gpkg_geometries(answer.paths["gpkg"]) == []
    # The API gives the same answer, and its files are the CLI's.
    result = SegEarth(UnsureRedStub(), "stub").predict(red_raster, "the red L", mode=mode, tile_size=256,
                                                      overlap=64)
    assert not result.present and not result.mask.any() and result.regions == []
    saved = result.save(tmp_path / "api")
    with rasterio.open(saved["mask"]) as m:
        assert m.read(1).max() == 0
    # Probabilities stay the model's: a user who wants them thresholds them as they like.
    prob_opts = PredictOptions(out_dir=tmp_path / "prob", mode=mode, tile_size=256, overlap=64, probabilities=True)
    (prob,) = predict_raster(UnsureRedStub(), red_raster, ["the red L"], prob_opts, "stub").results
    with rasterio.open(prob.mask) as m:
        assert np.nanmax(m.read(1)) > 0.99


def test_the_preview_of_a_not_here_answer_is_untinted(red_raster, tmp_path):
    previews = []
    for stub in (RedStub(), UnsureRedStub()):
        opts = PredictOptions(out_dir=tmp_path / type(stub).__name__)
        (answer,) = predict_raster(stub, red_raster, ["the red L"], opts, "stub").results
        previews.append(np.asarray(Image.open(answer.paths["preview"]).convert("RGB")).astype(int))
    found, not_here = previews
    # The preview shows the image with the mask tinted: the tint is all that differs, on the L only
    # (16 % of the image), so the "not here" preview is the bare image.
    tinted = np.abs(found - not_here).sum(axis=2) > 0
    assert 0.05 < tinted.mean() < 0.3
