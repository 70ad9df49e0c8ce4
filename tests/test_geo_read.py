"""Reading rasters: bands, dtype stretch, nodata, overviews, windows, letterbox, bad input."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.io import DatasetReader
from rasterio.transform import from_origin
from rasterio.windows import Window

from segearth.geo.read import (
    DEFAULT_MAX_PIXELS,
    RasterInputError,
    Stretch,
    compute_stretch,
    letterbox,
    open_raster,
    read_overview,
    read_valid_mask,
    read_window,
    select_bands,
)

from conftest import require_shared

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GEOTIFF = SHARED / "geotiff"
needs_data = pytest.mark.needs_shared(GEOTIFF)

# file -> (width, height, count, dtype, EPSG)
REAL = {
    "naip_rgbn_2019.tif": (934, 723, 4, "uint8", 26914),
    "spacenet_pan_uint16.tif": (900, 900, 1, "uint16", 32616),
    "spacenet_roads_uint16_epsg4326.tif": (1300, 1300, 1, "uint16", 4326),
    "spacenet_ms_4band_float64.tif": (300, 300, 4, "float64", 32631),
    "spacenet_rgb_uint8.tif": (200, 200, 3, "uint8", 32631),
    "neon_rgb_nodata255.tif": (400, 400, 3, "uint8", 32617),
    "landsat_int16_nodata_epsg4326.tif": (1024, 1024, 1, "int16", 4326),
}


def stretch_range(stretch: Stretch) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The per-band (low, high) of a percentile stretch (None only when the values are just clipped)."""
    assert stretch.low is not None and stretch.high is not None
    return stretch.low, stretch.high

def make_raster(path: Path, data: np.ndarray, nodata: float | None = None, crs: str | None = "EPSG:32631") -> Path:
    """Write a small (bands, h, w) GeoTIFF with a real projected CRS."""
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
        crs=crs, transform=from_origin(500000, 5700000, 2.0, 2.0), nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


@needs_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_every_real_raster_reads_as_rgb(name: str) -> None:
    width, height, count, dtype, epsg = REAL[name]
    info = open_raster(GEOTIFF / name)
    assert (info.width, info.height, info.count, info.dtypes[0]) == (width, height, count, dtype)
    assert info.crs is not None and info.crs.to_epsg() == epsg and info.has_georeference
    scene = read_overview(GEOTIFF / name, 512)
    assert scene.image.dtype == np.uint8 and scene.image.shape[2] == 3
    assert max(scene.image.shape[:2]) == min(512, max(width, height))
    assert scene.valid.shape == scene.image.shape[:2] and scene.valid.any()
    assert not scene.image[~scene.valid].any()  # nodata is black, like the letterbox padding
    if count < 3:
        assert any("replicated" in n for n in scene.notices)
        assert (scene.image[..., 0] == scene.image[..., 2]).all()
    if count > 3:
        assert any("bands 1,2,3" in n for n in scene.notices)


@needs_data
def test_sar_complex_is_refused_clearly() -> None:
    with pytest.raises(RasterInputError, match=r"spacenet_sar_complex64\.tif.*complex"):
        read_overview(GEOTIFF / "spacenet_sar_complex64.tif", 256)


@needs_data
def test_uint8_rgb_passes_through_unchanged_unless_asked() -> None:
    path = GEOTIFF / "spacenet_rgb_uint8.tif"
    with rasterio.open(path) as src:
        raw = np.moveaxis(src.read(), 0, -1)
    assert np.array_equal(read_overview(path, 1024).image, raw)
    stretched = read_overview(path, 1024, stretch=True)
    assert stretched.stretch.low is not None and not np.array_equal(stretched.image, raw)


@needs_data
def test_band_selection_and_bad_index() -> None:
    path = GEOTIFF / "naip_rgbn_2019.tif"
    info = open_raster(path)
    assert select_bands(info, [4, 3, 2])[0] == (4, 3, 2)
    assert select_bands(info, [4])[0] == (4, 4, 4)
    with rasterio.open(path) as src:
        nir = src.read(4, out_shape=(396, 512))
    scene = read_overview(path, 512, bands=[4, 3, 2], resampling=rasterio.enums.Resampling.nearest)
    assert np.array_equal(scene.image[..., 0], nir)
    with pytest.raises(RasterInputError, match=r"naip_rgbn_2019\.tif.*unknown band index \[5\]"):
        read_overview(path, 512, bands=[5, 3, 2])


@needs_data
def test_real_nodata_excluded_from_statistics_and_valid_mask() -> None:
    path = GEOTIFF / "landsat_int16_nodata_epsg4326.tif"
    stretch = compute_stretch(path)
    low, high = stretch_range(stretch)
    assert 200 <= low[0] < high[0] <= 4429  # the valid range, -9999 never counted
    with rasterio.open(path) as src:
        truth = src.read(1) != -9999
    assert np.array_equal(read_valid_mask(path), truth)


@needs_data
def test_single_saturated_channel_is_not_nodata() -> None:
    # NEON: nodata 255; a pixel is nodata only when all three bands are 255.
    path = GEOTIFF / "neon_rgb_nodata255.tif"
    with rasterio.open(path) as src:
        rgb = src.read()
    valid = read_valid_mask(path)
    assert np.array_equal(valid, ~(rgb == 255).all(axis=0))
    assert valid[(rgb == 255).any(axis=0)].any()


def test_synthetic_nodata_nan_and_two_bands(tmp_path: Path) -> None:
    data = np.full((2, 40, 60), -9999, dtype=np.int16)
    data[:, :, :30] = np.linspace(100, 200, 30 * 40).reshape(40, 30)
    path = make_raster(tmp_path / "two.tif", data, nodata=-9999)
    scene = read_overview(path, 64)
    assert any("band 1 replicated" in n and "band 2 ignored" in n for n in scene.notices)
    low, high = stretch_range(scene.stretch)
    assert low[0] >= 100 and high[0] <= 200
    assert scene.valid[:, :30].all() and not scene.valid[:, 30:].any()

    floats = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32)
    floats[:, 5, 5] = np.nan
    scene = read_overview(make_raster(tmp_path / "nan.tif", floats), 64)
    assert not scene.valid[5, 5] and scene.valid.sum() == 399
    assert np.isfinite(stretch_range(scene.stretch)[0]).all()


def test_window_uses_raster_wide_statistics(tmp_path: Path) -> None:
    data = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64) * 10
    path = make_raster(tmp_path / "ramp.tif", data)
    params = compute_stretch(path)
    tile = read_window(path, Window(32, 16, 16, 16), params)
    full = params.to_uint8(data[[0, 0, 0]].astype(np.float64), np.ones((64, 64), bool))
    assert np.array_equal(tile.image, full[16:32, 32:48])
    assert tile.transform.c == 500000 + 32 * 2.0 and tile.transform.f == 5700000 - 16 * 2.0
    with pytest.raises(ValueError, match="outside"):
        read_window(path, Window(60, 0, 16, 16), params)


def test_overview_never_reads_the_full_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4096, height=3072, count=1, dtype="uint16", crs="EPSG:32631",
        transform=from_origin(0, 3072, 1, 1), tiled=True, blockxsize=512, blockysize=512, compress="deflate",
    ) as dst:
        row = (np.arange(4096, dtype=np.uint16) % 1000)[None].repeat(512, axis=0)
        for r in range(0, 3072, 512):
            dst.write(row, 1, window=Window(0, r, 4096, 512))

    shapes: list[tuple[int, ...] | None] = []
    original_read = DatasetReader.read

    def spy(self: DatasetReader, *args: object, **kwargs: object) -> np.ndarray:
        out_shape = kwargs.get("out_shape")
        assert out_shape is None or isinstance(out_shape, tuple)
        shapes.append(out_shape)
        return original_read(self, *args, **kwargs)

    monkeypatch.setattr(DatasetReader, "read", spy)
    tracemalloc.start()
    scene = read_overview(path, 512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scene.image.shape == (384, 512, 3)
    assert shapes and all(s is not None and max(s[1:]) <= 1024 for s in shapes)
    assert peak < 24 * 2**20  # the full uint16 array alone would be 24 MiB


def test_non_georeferenced_jpeg(tmp_path: Path) -> None:
    jpg = next(require_shared(SHARED / "dubai").glob("*/*.jpg"))
    scene = read_overview(jpg, 256)
    assert not scene.info.has_georeference and scene.info.crs is None
    assert any("pixel coordinates" in n for n in scene.notices)


@pytest.mark.parametrize(
    "content, message",
    [(None, "file not found"), (b"", "empty"), (b"this is not a raster", "not a readable raster")],
)
def test_bad_files_raise_raster_input_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.tif"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RasterInputError, match=message) as err:
        read_overview(path, 256)
    assert str(path) in str(err.value)


def test_truncated_and_all_nodata_rasters(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 4000, (1, 512, 512), dtype=np.uint16)
    full = tmp_path / "full.tif"
    with rasterio.open(full, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint16",
                       tiled=True, compress="deflate", crs="EPSG:32631", transform=from_origin(0, 512, 1, 1)) as dst:
        dst.write(data)
    blob = full.read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(RasterInputError, match=r"truncated\.tif.*truncated or corrupt"):
        read_overview(truncated, 256)

    empty = make_raster(tmp_path / "nodata.tif", np.zeros((1, 8, 8), np.uint16), nodata=0)
    with pytest.raises(RasterInputError, match=r"nodata\.tif.*no valid data"):
        compute_stretch(empty)


@pytest.mark.parametrize("h, w", [(723, 934), (934, 723), (500, 500), (3, 1000)])
def test_letterbox_geometry_matches_reference(h: int, w: int) -> None:
    image = np.random.default_rng(2).integers(1, 256, (h, w, 3), dtype=np.uint8)
    canvas, box = letterbox(image, 512)
    new_h, new_w = (int(h * 512 / w), 512) if w > h else (512, int(w * 512 / h))
    assert (box.new_h, box.new_w) == (new_h, new_w)
    assert (box.top, box.left) == ((512 - new_h) // 2, (512 - new_w) // 2)
    inside = np.zeros((512, 512), bool)
    inside[box.top : box.top + new_h, box.left : box.left + new_w] = True
    assert canvas.shape == (512, 512, 3) and not canvas[~inside].any()


def test_letterbox_unletterbox_round_trip() -> None:
    yy, xx = np.mgrid[0:300, 0:400]
    smooth = (yy * 0.5 + xx * 0.3).astype(np.float32)
    image = np.repeat(np.clip(smooth, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    canvas, box = letterbox(image, 256)
    back = box.unletterbox(canvas[..., 0].astype(np.float32))
    assert back.shape == (300, 400) and np.abs(back - image[..., 0]).max() <= 3

    mask = np.zeros((300, 400), bool)
    mask[100:200, 150:300] = True
    small = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None, None].float(), size=(box.new_h, box.new_w), mode="nearest-exact"
    )[0, 0].numpy() > 0
    mask_canvas = np.zeros((256, 256), bool)
    mask_canvas[box.top : box.top + box.new_h, box.left : box.left + box.new_w] = small
    back_mask = box.unletterbox(mask_canvas)
    assert back_mask.dtype == bool and (back_mask != mask).mean() < 0.01

    logits = torch.randn(64, 64)  # the decoder's raw resolution, upsampled to the canvas first
    out = box.unletterbox(logits, 30, 40)
    assert isinstance(out, torch.Tensor) and out.shape == (30, 40)


def test_pixel_limit_refuses_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    start = time.perf_counter()
    with rasterio.open(  # 10 gigapixels declared, one 4x4 corner written: a ~0.5 MB sparse file
        path, "w", driver="GTiff", width=100_000, height=100_000, count=1, dtype="uint8", crs="EPSG:32631",
        transform=from_origin(500000, 5700000, 1, 1), tiled=True, blockxsize=512, blockysize=512,
        compress="deflate", sparse_ok=True, BIGTIFF="YES",
    ) as dst:
        dst.write(np.ones((1, 4, 4), np.uint8), window=Window(0, 0, 4, 4))
    assert path.stat().st_size < 2**20 and time.perf_counter() - start < 1.5
    assert DEFAULT_MAX_PIXELS < 100_000 * 100_000

    start = time.perf_counter()
    with pytest.raises(RasterInputError) as err:
        open_raster(path)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "100000x100000" in message and "--max-pixels" in message
    info = open_raster(path, max_pixels=None)
    assert (info.width, info.height, info.name, info.path) == (100_000, 100_000, "huge.tif", path)
    assert open_raster(path, max_pixels=10**10).pixels == 10**10  # the limit itself is allowed
    with pytest.raises(RasterInputError, match="above the limit of 1,000 pixels"):
        open_raster(make_raster(tmp_path / "small.tif", np.zeros((1, 40, 40), np.uint8)), max_pixels=1000)


@pytest.mark.parametrize("h, w", [(301, 517), (512, 512), (1000, 700)])  # (512, 512) -> 256: OpenCV's 2x case
def test_letterbox_resize_is_the_official_opencv_one(h: int, w: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import cv2

    image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    canvas, box = letterbox(image, 256)
    placed = canvas[box.top : box.top + box.new_h, box.left : box.left + box.new_w]
    official = cv2.resize(image, (box.new_w, box.new_h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(placed, official)
    # Without OpenCV: torch's bilinear, the same geometry within one grey level.
    monkeypatch.setitem(sys.modules, "cv2", None)
    fallback, _ = letterbox(image, 256)
    diff = np.abs(fallback.astype(int) - canvas.astype(int))
    assert diff.max() <= 1 + (h == 2 * 256)  # OpenCV averages 2x2 blocks for an exact 2x reduction
