"""`segearth serve` map placement: the preview on a Web Mercator grid with lon/lat bounds, or a pixel plane."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform, transform_bounds

from test_serve import GEOTIFF, _raster, _upload, client, make_client, predictor  # noqa: F401 (fixtures)


def _mercator_y(lat: float) -> float:
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def _map_pixel(src, meta, shape, col: int, row: int) -> tuple[int, int]:
    """(row, col) in map.png of a source pixel's centre, from rasterio's lon/lat and the Mercator formula."""
    (south, west), (north, east) = meta["map"]["bounds"]
    x, y = src.xy(row, col)  # the pixel's centre
    (lon,), (lat,) = transform(src.crs, "EPSG:4326", [x], [y])
    px = (lon - west) / (east - west) * shape[1]
    py = (_mercator_y(north) - _mercator_y(lat)) / (_mercator_y(north) - _mercator_y(south)) * shape[0]
    return int(py), int(px)


def _map_png(client, meta) -> np.ndarray:
    r = client.get(meta["map"]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


@pytest.mark.parametrize("name", ["naip_rgbn_2019.tif", "spacenet_rgb_uint8.tif"])
def test_georeferenced_preview_is_warped_to_web_mercator_at_its_true_place(client, name):
    meta = _upload(client, name)
    view = meta["map"]
    assert view["mode"] == "geographic" and not view["flip_y"]
    (south, west), (north, east) = view["bounds"]
    rgba = _map_png(client, meta)
    h, w = rgba.shape[:2]
    with rasterio.open(_raster(name)) as src:
        footprint = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        # The warped grid covers the footprint to within a pixel (0.5 % of the width) on each side.
        tol_x, tol_y = 0.005 * (east - west), 0.005 * (north - south)
        assert abs(west - footprint[0]) < tol_x and abs(east - footprint[2]) < tol_x
        assert abs(south - footprint[1]) < tol_y and abs(north - footprint[3]) < tol_y
        # Pixels of the source land where their lon/lat says, with their own colour.
        rng = np.random.default_rng(0)
        for col, row in zip(rng.integers(5, src.width - 5, 20), rng.integers(5, src.height - 5, 20), strict=True):
            seen = rgba[_map_pixel(src, meta, (h, w), col, row)]
            around = src.read([1, 2, 3], window=((row - 1, row + 2), (col - 1, col + 2))).reshape(3, -1).T
            assert seen[3] == 255
            assert np.abs(around.astype(int) - seen[:3].astype(int)).max(axis=1).min() == 0, (col, row)
    assert (rgba[..., 3] == 0).any()  # the corners outside the rotated footprint are transparent


def test_nodata_is_transparent_on_the_map(client):
    meta = _upload(client, "neon_rgb_nodata255.tif")
    rgba = _map_png(client, meta)
    with rasterio.open(_raster("neon_rgb_nodata255.tif")) as src:
        valid = src.dataset_mask() > 0
        rows, cols = np.nonzero(~valid)
        assert rows.size
        alpha = [rgba[..., 3][_map_pixel(src, meta, rgba.shape[:2], c, r)] for r, c in zip(rows, cols, strict=True)]
        rows, cols = np.nonzero(valid)
        picks = np.random.default_rng(0).choice(rows.size, 200)
        opaque = [rgba[..., 3][_map_pixel(src, meta, rgba.shape[:2], cols[i], rows[i])] for i in picks]
    assert np.mean(np.array(alpha) == 0) > 0.9 and np.mean(np.array(opaque) == 255) > 0.95


def test_raster_without_crs_gets_a_pixel_plane(client):
    buf = io.BytesIO()
    Image.fromarray(np.full((120, 200, 3), 90, np.uint8)).save(buf, "PNG")
    meta = client.post("/images", content=buf.getvalue(), params={"filename": "p.png"}).json()
    assert meta["map"] == {"mode": "pixel", "bounds": [[-120.0, 0.0], [0.0, 200.0]], "flip_y": True,
                           "url": f"/images/{meta['id']}/map.png"}
    assert _map_png(client, meta).shape == (120, 200, 4)


def test_answer_raster_overlay_lies_on_the_map_grid_where_the_mask_is(client):
    meta = _upload(client, "neon_rgb_nodata255.tif")
    answer = client.post(f"/images/{meta['id']}/ask", json={"questions": ["the trees"]}).json()["answers"][0]
    assert answer["overlay"] == f"/images/{meta['id']}/answers/1/overlay"
    r = client.get(answer["overlay"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(r.content)))
    base = _map_png(client, meta)
    assert overlay.shape == base.shape  # the same grid and bounds as the image on the map
    assert (overlay[..., 3][base[..., 3] == 0] == 0).all()  # nodata and outside the footprint: transparent
    with rasterio.MemoryFile(client.get(answer["downloads"]["geotiff"]).content) as mem, mem.open() as m:
        mask = m.read(1) == 255
    with rasterio.open(_raster("neon_rgb_nodata255.tif")) as src:
        valid = src.dataset_mask() > 0
        rng = np.random.default_rng(0)
        for wanted in (True, False):
            rows, cols = np.nonzero((mask == wanted) & valid)
            assert rows.size, "the random model's answer should have target and background"
            picks = rng.choice(rows.size, 300)
            alpha = [overlay[..., 3][_map_pixel(src, meta, overlay.shape[:2], cols[i], rows[i])] for i in picks]
            assert np.mean((np.array(alpha) == 255) == wanted) > 0.9, wanted


def test_answer_overlay_of_a_pixel_plane_image_is_its_preview_grid_mask(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 200, 3), np.uint8)).save(buf, "PNG")
    meta = client.post("/images", content=buf.getvalue(), params={"filename": "p.png"}).json()
    answer = client.post(f"/images/{meta['id']}/ask", json={"questions": ["the roofs"]}).json()["answers"][0]
    overlay = client.get(answer["overlay"]).content
    assert overlay == client.get(answer["downloads"]["png"]).content
    assert np.asarray(Image.open(io.BytesIO(overlay))).shape == (120, 200, 4)
