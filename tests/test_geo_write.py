"""Writing masks, polygons, previews, and output names."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box, shape

from segearth.geo.read import open_raster, read_overview, read_valid_mask
from segearth.geo.tiles import iter_blocks, upsample_blocks
from segearth.geo.write import (
    OVERLAY_RGB,
    mask_to_polygons,
    write_geojson,
    write_gpkg,
    write_mask_geotiff,
    write_preview_png,
)

GEOTIFF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"
needs_data = pytest.mark.needs_shared(GEOTIFF)


def synthetic(tmp_path: Path, crs: str | None = "EPSG:32631") -> Path:
    """60x80 int16 raster, nodata in the right quarter."""
    data = np.tile(np.arange(80, dtype=np.int16), (60, 1))[None]
    data[:, :, 60:] = -9999
    path = tmp_path / "scene.tif"
    transform = from_origin(500000, 5700000, 2.0, 2.0) if crs else Affine.identity()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # intended for crs=None
        dst = rasterio.open(path, "w", driver="GTiff", width=80, height=60, count=1, dtype="int16",
                            crs=crs, transform=transform, nodata=-9999)
    with dst:
        dst.write(data)
    return path


@needs_data
@pytest.mark.parametrize("name", ["naip_rgbn_2019.tif", "landsat_int16_nodata_epsg4326.tif"])
def test_mask_geotiff_round_trips_crs_and_transform(tmp_path: Path, name: str) -> None:
    src = GEOTIFF / name
    info = open_raster(src)
    scene = read_overview(src, 256)
    low = np.where(scene.image[..., 0] > 100, 4.0, -4.0).astype(np.float32)
    blocks = ((w, v > 0) for w, v in upsample_blocks(low, info.width, info.height, 300))
    out = write_mask_geotiff(tmp_path / "mask.tif", blocks, info, valid=lambda w: read_valid_mask(src, w),
                             tags={"question": "bright?", "model": "m"})
    valid = read_valid_mask(src)
    with rasterio.open(out) as dst:
        assert dst.crs == info.crs and dst.transform == info.transform
        assert (dst.width, dst.height, dst.dtypes[0]) == (info.width, info.height, "uint8")
        assert_cog(dst)
        mask = dst.read(1)
        assert set(np.unique(mask)) <= {0, 255} and (mask == 255).any()
        assert not mask[~valid].any()  # nodata never inside the mask
        assert np.array_equal(dst.read_masks(1) > 0, valid)  # and flagged as nodata
        assert dst.tags()["question"] == "bright?" and dst.tags()["model"] == "m"
        assert dst.descriptions == ("mask: bright?",)
        cmap = dst.colormap(1)
        assert cmap[255] == (*OVERLAY_RGB, 255) and cmap[0][:3] == (0, 0, 0)
        # The mask band has overviews too: at half resolution nodata is still flagged.
        level = dst.overviews(1)[0]
        small = dst.read_masks(1, out_shape=(dst.height // level, dst.width // level)) > 0
        coarse = valid[:: level, :: level][: small.shape[0], : small.shape[1]]
        assert (small == coarse).mean() > 0.97
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]  # no staging or temporary left


def assert_cog(dst: rasterio.io.DatasetReader) -> None:
    """The layout a Cloud Optimized GeoTIFF must have (rasterio >= 1.4 has no validator)."""
    assert dst.driver == "GTiff" and dst.profile["tiled"] and dst.block_shapes[0] == (512, 512)
    assert dst.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # GDAL reports what the COG driver wrote
    assert dst.compression.value == "DEFLATE"
    if max(dst.width, dst.height) > 512:
        assert dst.overviews(1), "a COG larger than one tile needs overviews"


def test_probability_geotiff_nan_nodata_and_overwrite(tmp_path: Path) -> None:
    src = synthetic(tmp_path)
    info = open_raster(src)
    probs = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    path = write_mask_geotiff(tmp_path / "p.tif", probs, info, probabilities=True, valid=read_valid_mask(src),
                              tags={"question": "how likely?"})
    with rasterio.open(path) as dst:
        assert dst.dtypes[0] == "float32" and np.isnan(dst.nodata)
        assert dst.descriptions == ("probability: how likely?",) and dst.tags()["question"] == "how likely?"
        assert dst.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        back = dst.read(1)
    assert np.isnan(back[:, 60:]).all() and np.array_equal(back[:, :60], probs[:, :60])
    with pytest.raises(FileExistsError, match="p.tif already exists"):
        write_mask_geotiff(path, probs, info, probabilities=True)
    write_mask_geotiff(path, probs > 0.5, info, overwrite=True)
    with pytest.raises(TypeError, match="threshold logits"):
        write_mask_geotiff(path, probs, info, overwrite=True)


def test_block_writes_equal_whole_array(tmp_path: Path) -> None:
    info = open_raster(synthetic(tmp_path))
    mask = np.random.default_rng(1).random((60, 80)) > 0.5
    blocks = ((w, mask[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width])
              for w in iter_blocks(80, 60, 32))
    with rasterio.open(write_mask_geotiff(tmp_path / "b.tif", blocks, info)) as dst:
        assert np.array_equal(dst.read(1) == 255, mask)


def test_polygons_in_crs_coordinates_with_properties(tmp_path: Path) -> None:
    info = open_raster(synthetic(tmp_path))
    mask = np.zeros((60, 80), bool)
    mask[10:20, 10:30] = True  # 200 px of 4 m² -> 800 m²
    mask[14:16, 14:16] = False  # a hole
    mask[40:42, 50:51] = True  # 2 px -> 8 m², dropped by min_area
    probs = np.where(mask, 0.75, 0.1)
    polygons = mask_to_polygons(mask, info.transform, info.crs, probabilities=probs, min_area=10.0,
                                properties={"question": "Where is it?", "model": "tiny"})
    assert len(polygons) == 1
    (polygon,) = polygons
    assert polygon.geometry.equals(
        box(500020, 5700000 - 40, 500060, 5700000 - 20).difference(box(500028, 5699968, 500032, 5699972)))
    assert box(*info.bounds).contains(polygon.geometry)
    props = polygon.properties
    assert props["question"] == "Where is it?" and props["model"] == "tiny"
    assert props["area_m2"] == pytest.approx(784.0, rel=1e-3)
    assert set(props) == {"question", "model", "area_m2", "mean_probability"}
    assert props["mean_probability"] == pytest.approx(0.75)
    simplified = mask_to_polygons(mask, info.transform, info.crs, simplify_tolerance=5.0)
    assert len(simplified) == 2 and all(p.geometry.is_valid for p in simplified)


@needs_data
def test_geographic_areas_and_geojson_wgs84(tmp_path: Path) -> None:
    src = GEOTIFF / "spacenet_pan_uint16.tif"  # UTM 16N, 0.5 m pixels
    info = open_raster(src)
    mask = np.zeros((info.height, info.width), bool)
    mask[100:300, 200:260] = True
    polygons = mask_to_polygons(mask, info.transform, info.crs, properties={"question": "q"})
    assert polygons[0].properties["area_m2"] == pytest.approx(200 * 60 * 0.25, rel=2e-3)
    path = write_geojson(tmp_path / "p.geojson", polygons, info.crs)
    doc = json.loads(path.read_text())
    assert "crs" not in doc and doc["features"][0]["properties"]["question"] == "q"
    lon, lat = shape(doc["features"][0]["geometry"]).centroid.coords[0]
    west, south, east, north = transform_bounds(info.crs, "EPSG:4326", *info.bounds)
    assert west < lon < east and south < lat < north and -85 < lon < -84  # Atlanta, lon/lat order
    with pytest.raises(FileExistsError):
        write_geojson(path, polygons, info.crs)

    geo = GEOTIFF / "landsat_int16_nodata_epsg4326.tif"
    ginfo = open_raster(geo)
    gmask = np.zeros((ginfo.height, ginfo.width), bool)
    gmask[500:600, 700:800] = True
    (gpoly,) = mask_to_polygons(gmask, ginfo.transform, ginfo.crs)
    assert set(gpoly.properties) == {"area_m2"}  # never an area in degree²
    # ~0.00032244 x 0.00032242 degrees at 41.9 N: about 26.7 m x 35.8 m per pixel.
    assert gpoly.properties["area_m2"] == pytest.approx(1e4 * 26.7 * 35.8, rel=0.02)


def test_gpkg_native_crs(tmp_path: Path) -> None:
    import pyogrio
    info = open_raster(synthetic(tmp_path))
    mask = np.zeros((60, 80), bool)
    mask[5:9, 5:9] = mask[30:40, 30:50] = True
    polygons = mask_to_polygons(mask, info.transform, info.crs, properties={"question": "q"})
    path = write_gpkg(tmp_path / "p.gpkg", polygons, info.crs)
    meta = pyogrio.read_info(path)
    assert meta["features"] == 2 and meta["crs"] == "EPSG:32631" and meta["geometry_type"] == "Polygon"
    assert "area_m2" in list(meta["fields"])
    write_gpkg(path, [], info.crs, overwrite=True)
    assert pyogrio.read_info(path)["features"] == 0


def test_pixel_coordinates_without_georeference(tmp_path: Path) -> None:
    info = open_raster(synthetic(tmp_path, crs=None))
    assert not info.has_georeference
    mask = np.zeros((60, 80), bool)
    mask[1:3, 2:5] = True
    (polygon,) = mask_to_polygons(mask, info.transform, info.crs)
    assert polygon.geometry.bounds == (2, 1, 5, 3) and polygon.properties == {"area_px": 6.0}
    doc = json.loads(write_geojson(tmp_path / "p.geojson", [polygon], None).read_text())
    assert "pixel" in doc["segearth:coordinates"]
    write_mask_geotiff(tmp_path / "m.tif", mask, info)
    with warnings.catch_warnings(record=True) as caught:  # the reader's notice already says "no CRS"
        warnings.simplefilter("always")
        write_gpkg(tmp_path / "p.gpkg", [polygon], None)
    assert not [w for w in caught if "crs" in str(w.message).lower()], [str(w.message) for w in caught]


def test_preview_png(tmp_path: Path) -> None:
    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 10:40] = True
    path = write_preview_png(tmp_path / "p.png", image, mask, "Which buildings could host solar panels? " * 3)
    with Image.open(path) as png:
        assert png.width == 160 and png.height > 120  # caption strip below the image
        pixels = np.asarray(png.convert("RGB"))
    assert (pixels[40, 40] != 90).any() and (pixels[100, 140] == 90).all()
    with pytest.raises(FileExistsError):
        write_preview_png(path, image, mask, "again")


def test_window_shape_mismatch_is_rejected(tmp_path: Path) -> None:
    info = open_raster(synthetic(tmp_path))
    with pytest.raises(ValueError, match="does not match window"):
        write_mask_geotiff(tmp_path / "m.tif", [(Window(0, 0, 10, 10), np.ones((5, 5), bool))], info)
