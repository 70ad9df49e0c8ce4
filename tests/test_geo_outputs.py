"""Output names, confinement of manifest names, atomic writers, vector details and previews."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.io import DatasetWriter
from rasterio.transform import from_origin

from segearth.geo.paths import OutputWriteError, atomic_path, confined_output, output_stem, refuse_overwrite
from segearth.geo.read import RasterInfo, open_raster
from segearth.geo.vector import default_min_area, layer_name, mask_to_polygons
from segearth.geo.write import write_geojson, write_gpkg, write_mask_geotiff, write_preview_png

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def raster(tmp_path: Path, crs: str = "EPSG:32631", res: float = 2.0, origin: tuple[float, float] = (500000, 5700000),
           size: tuple[int, int] = (60, 80)) -> RasterInfo:
    path = tmp_path / "in" / "scene.tif"
    path.parent.mkdir(exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=1, dtype="uint8", crs=crs,
                       transform=from_origin(*origin, res, res)) as dst:
        dst.write(np.ones((1, *size), np.uint8))
    return open_raster(path)


# ---------------------------------------------------------------- names


def test_output_stem_keeps_the_whole_input_stem() -> None:
    q = "Where could a boat travel?"
    a = output_stem("/data/sentinel2_20230601_tile_0001.tif", q)
    b = output_stem("/data/sentinel2_20230601_tile_0002.tif", q)
    assert a != b and a.startswith("sentinel2-20230601-tile-0001_where-could-a-boat-travel_")
    assert re.fullmatch(r"[a-z0-9-]+_[a-z0-9-]+_[0-9a-f]{8}", a)
    assert output_stem("/data/sentinel2_20230601_tile_0001.tif", q) == a  # deterministic
    assert output_stem("/data/sentinel2_20230601_tile_0001.tif", q, reading="tiles") != a
    assert output_stem("/data/sentinel2_20230601_tile_0001.tif", q, model="/ckpt/released") != a
    assert output_stem("/other/sentinel2_20230601_tile_0001.tif", q) != a  # same name, other folder
    # Questions that slug alike still differ by their hash.
    assert output_stem("x.tif", "near the école?") != output_stem("x.tif", "near the ecole?")
    assert output_stem("x.tif", "水はどこ？").startswith("x_q_")


def test_runs_that_read_the_raster_differently_get_different_names() -> None:
    """True and false colour of one raster answer differently; both must fit in one --out."""
    from segearth.pipeline import RunOptions

    def stem(**options: Any) -> str:
        return output_stem("/data/naip.tif", "the water", reading=RunOptions(**options).reading())

    default = stem()
    assert default == output_stem("/data/naip.tif", "the water")  # default runs keep their names (--skip-existing)
    assert len({default, stem(bands=(4, 1, 2)), stem(bands=(1, 2, 3)), stem(mode="tiles"),
                stem(mode="tiles", tile_size=192), stem(mode="tiles", overlap=64)}) == 6
    assert stem(tile_size=192) == default  # scene mode does not tile: the same answer, the same name


def test_output_stem_hashes_the_absolute_path_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert output_stem("scene.tif", "q") == output_stem(tmp_path / "scene.tif", "q")
    url = "https://host/cogs/scene.tif?X-Amz-Signature=abc"
    assert output_stem(url, "q").startswith("scene_q_") and output_stem(url, "q") != output_stem("scene.tif", "q")


def test_output_stem_caps_the_length_but_keeps_the_hash() -> None:
    long_stem = "s" * 140 + "_0001.tif"
    a, b = output_stem(long_stem, "q" * 500), output_stem(long_stem.replace("0001", "0002"), "q" * 500)
    assert len(a) <= 150 and len(b) <= 150 and a != b
    assert re.search(r"_q{20,}_[0-9a-f]{8}$", a)  # the question keeps room, the hash survives
    assert len(output_stem("x.tif", "q", max_len=40)) <= 40


def test_confined_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert confined_output(Path("."), "sub/x") == tmp_path / "sub" / "x"  # absolute, also from a relative folder
    assert confined_output(tmp_path, "x") == tmp_path / "x"
    assert confined_output(tmp_path, "sub/x") == tmp_path / "sub" / "x"
    assert confined_output(tmp_path, "./sub/x") == tmp_path / "sub" / "x"
    for bad, why in [("", "empty"), (" ", "empty"), (".", "empty"), ("/etc/x", "absolute"),
                     ("C:/x", "absolute"), ("../x", r"'\.\.'"), ("sub/../../x", r"'\.\.'")]:
        with pytest.raises(ValueError, match=why) as err:
            confined_output(tmp_path, bad)
        assert repr(bad) in str(err.value)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the output folder"):
        confined_output(tmp_path, "link/x")


# ---------------------------------------------------------------- atomic writes


def test_atomic_path_commits_only_complete_files(tmp_path: Path) -> None:
    final = tmp_path / "x.tif"
    with atomic_path(final, overwrite=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".x.partial-") and tmp.suffix == ".tif"
        tmp.write_bytes(b"new")
        (tmp_path / f"{tmp.name}.aux.xml").write_text("side file")
        assert not final.exists()
    assert final.read_bytes() == b"new"
    with pytest.raises(FileExistsError, match="x.tif already exists"):
        with atomic_path(final, overwrite=False):
            raise AssertionError("the block must not run")

    with pytest.raises(ZeroDivisionError):
        with atomic_path(final, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            (tmp_path / f"{tmp.name}.aux.xml").write_text("side file")
            raise ZeroDivisionError  # interrupted mid-write
    assert final.read_bytes() == b"new"  # the old result is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]  # temporary and side file gone


def test_atomic_path_refuses_a_name_taken_meanwhile(tmp_path: Path) -> None:
    final = tmp_path / "x.geojson"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_path(final, overwrite=False) as tmp:
            tmp.write_text("mine")
            final.write_text("a concurrent run")
    assert final.read_text() == "a concurrent run" and [p.name for p in tmp_path.iterdir()] == ["x.geojson"]


def _georeferenced_mask(tmp_path: Path) -> tuple[RasterInfo, np.ndarray]:
    info = raster(tmp_path)
    mask = np.zeros((60, 80), bool)
    mask[10:20, 10:30] = True
    return info, mask


def _fail_mask(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    calls = []
    original = DatasetWriter.write

    def write(self: DatasetWriter, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first block is on disk, the second fails
            raise exc
        original(self, *args, **kwargs)

    monkeypatch.setattr(DatasetWriter, "write", write)


def _fail_after_writing(monkeypatch: pytest.MonkeyPatch, target: object, name: str, exc: BaseException) -> None:
    """Make ``target.name`` write a truncated file, then raise ``exc`` (a disk filling up mid-write)."""
    def partial(*args: object, **kwargs: object) -> None:
        path = next(a for a in args if isinstance(a, (str, Path)) and str(a).endswith(("json", "gpkg", "png")))
        Path(path).write_bytes(b"\0" * 100)
        raise exc

    monkeypatch.setattr(target, name, partial)


def _run_writer(kind: str, tmp_path: Path, out: Path) -> Path:
    info, mask = _georeferenced_mask(tmp_path)
    if kind == "mask":
        blocks = [(w, mask[:, int(w.col_off): int(w.col_off + w.width)])
                  for w in (rasterio.windows.Window(0, 0, 40, 60), rasterio.windows.Window(40, 0, 40, 60))]
        return write_mask_geotiff(out / "r_mask.tif", blocks, info)
    polygons = mask_to_polygons(mask, info.transform, info.crs, properties={"question": "q"})
    if kind == "geojson":
        return write_geojson(out / "r.geojson", polygons, info.crs)
    if kind == "gpkg":
        return write_gpkg(out / "r.gpkg", polygons, info.crs, question="q")
    return write_preview_png(out / "r_preview.png", np.zeros((60, 80, 3), np.uint8), mask, "q")


def _inject(kind: str, monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    if kind == "mask":
        _fail_mask(monkeypatch, exc)
    elif kind == "geojson":
        _fail_after_writing(monkeypatch, Path, "write_text", exc)
    elif kind == "gpkg":
        import pyogrio.raw

        _fail_after_writing(monkeypatch, pyogrio.raw, "write", exc)
    else:
        _fail_after_writing(monkeypatch, Image.Image, "save", exc)


WRITERS = ["mask", "geojson", "gpkg", "preview"]


@pytest.mark.parametrize("kind", WRITERS)
def test_disk_full_mid_write_leaves_nothing(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with monkeypatch.context() as patch:
        _inject(kind, patch, ENOSPC)
        with pytest.raises(OutputWriteError) as err:
            _run_writer(kind, tmp_path, out)
    message = str(err.value)
    assert re.fullmatch(rf"cannot write {re.escape(str(out))}/r[._a-z]+: No space left on device", message), message
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, ValueError)  # a CLI user error
    assert list(out.iterdir()) == []  # neither the final name nor a temporary

    with monkeypatch.context() as patch:
        _inject(kind, patch, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            _run_writer(kind, tmp_path, out)
    assert list(out.iterdir()) == []

    path = _run_writer(kind, tmp_path, out)  # a rerun succeeds
    assert [p.name for p in out.iterdir()] == [path.name] and path.stat().st_size > 200


@pytest.mark.parametrize("kind", WRITERS)
def test_unwritable_folder_is_a_one_line_error(kind: str, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(OutputWriteError, match=rf"^cannot write {re.escape(str(missing))}/r\S+: No such file") as err:
        _run_writer(kind, tmp_path, missing)
    assert "\n" not in str(err.value)


def test_real_write_failure_inside_gdal_reports_the_os_reason(tmp_path: Path) -> None:
    """A file-size limit makes GDAL's own writes fail (as a full disk would), not a mock."""
    info = raster(tmp_path, size=(1024, 1024))
    noise = np.random.default_rng(0).random((1024, 1024)) > 0.5  # ~130 kB even compressed
    out = tmp_path / "out"
    out.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        with pytest.raises(OutputWriteError) as err:
            write_mask_geotiff(out / "m.tif", noise, info)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert str(err.value) == f"cannot write {out / 'm.tif'}: {os.strerror(errno.EFBIG)}"
    assert list(out.iterdir()) == []
    with rasterio.open(write_mask_geotiff(out / "m.tif", noise, info)) as dst:
        assert np.array_equal(dst.read(1) == 255, noise)


def test_mask_errors_from_the_caller_are_not_disguised(tmp_path: Path) -> None:
    info, mask = _georeferenced_mask(tmp_path)
    with pytest.raises(TypeError, match="threshold logits"):
        write_mask_geotiff(tmp_path / "m.tif", mask.astype(np.float32), info)
    assert not [p for p in tmp_path.iterdir() if p.name != "in"]


# ---------------------------------------------------------------- vector outputs


def _all_coordinates(geometry: dict) -> list[float]:
    flat: list[float] = []

    def walk(c: object) -> None:
        if isinstance(c, list):
            for item in c:
                walk(item)
        else:
            assert isinstance(c, (int, float)), c
            flat.append(c)

    walk(geometry["coordinates"])
    return flat


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def test_geojson_precision_and_areas_in_m2_on_a_geographic_raster(tmp_path: Path) -> None:
    # 1e-4 degree pixels at the equator: 11.132 m (longitude) x 11.057 m (latitude).
    info = raster(tmp_path, crs="EPSG:4326", res=1e-4, origin=(10.0, 0.003))
    mask = np.zeros((60, 80), bool)
    mask[0:10, 0:10] = True  # 100 pixels, just north of the equator
    mask[30:33, 40:41] = True
    cell = cell_m2(0.0025, 1e-4)
    polygons = mask_to_polygons(mask, info.transform, info.crs, properties={"question": "q"}, min_area=5 * cell)
    assert len(polygons) == 1 and polygons[0].properties["area_m2"] == pytest.approx(100 * cell, rel=2e-3)
    path = write_geojson(tmp_path / "p.geojson", polygons, info.crs)
    text = path.read_text()
    assert "degree" not in text and '"area"' not in text
    coords = _all_coordinates(json.loads(text)["features"][0]["geometry"])
    assert coords and max(_decimals(c) for c in coords) <= 7 and all(9.99 < c < 10.01 or c < 0.01 for c in coords)
    assert 10.001 in coords and 0.002 in coords  # 10.000999999999999 in the transform, rounded

    simplified = mask_to_polygons(mask, info.transform, None, simplify_tolerance=0.4)  # pixel coordinates
    scaled = [type(p)(p.geometry.buffer(0.1234567), p.properties) for p in simplified]
    doc = json.loads(write_geojson(tmp_path / "px.geojson", scaled, None).read_text())
    pixel = [c for f in doc["features"] for c in _all_coordinates(f["geometry"])]
    assert max(_decimals(c) for c in pixel) == 3
    assert all(set(f["properties"]) == {"area_px"} for f in doc["features"])


def cell_m2(lat: float, degrees: float) -> float:
    """Analytic area of a ``degrees`` x ``degrees`` cell at latitude ``lat`` on the WGS84 ellipsoid."""
    a, e2 = 6378137.0, 0.00669437999014
    s2 = np.sin(np.radians(lat)) ** 2
    east = np.radians(degrees) * a * np.cos(np.radians(lat)) / np.sqrt(1 - e2 * s2)
    north = np.radians(degrees) * a * (1 - e2) / (1 - e2 * s2) ** 1.5
    return float(east * north)


def test_default_min_area() -> None:
    wgs84 = rasterio.crs.CRS.from_epsg(4326)
    equator = from_origin(10.0, 0.005, 1e-4, 1e-4)  # the raster's centre (50 rows down) is on the equator
    assert cell_m2(0, 1e-4) == pytest.approx(11.1319 * 11.0574, rel=1e-4)
    assert default_min_area(equator, wgs84, 1, raster_shape=(100, 100)) == pytest.approx(cell_m2(0, 1e-4), rel=1e-4)
    assert default_min_area(equator, wgs84, 16, raster_shape=(100, 100)) == pytest.approx(cell_m2(0, 16e-4), rel=1e-4)
    north = from_origin(10.0, 60.005, 1e-4, 1e-4)
    assert default_min_area(north, wgs84, 1, raster_shape=(100, 100)) == pytest.approx(cell_m2(60, 1e-4), rel=1e-4)
    # Without the shape the cell sits at the top-left corner, here 60.005° N.
    assert default_min_area(north, wgs84, 1) == pytest.approx(cell_m2(60.005 - 0.5e-4, 1e-4), rel=1e-5)
    utm = from_origin(500000, 5700000, 0.5, 0.5)
    assert default_min_area(utm, rasterio.crs.CRS.from_epsg(32631), 8) == pytest.approx(16.0, rel=1e-3)
    assert default_min_area(utm, None, 8) == 64.0


def test_gpkg_layer_named_from_the_question(tmp_path: Path) -> None:
    import pyogrio
    info, mask = _georeferenced_mask(tmp_path)
    polygons = mask_to_polygons(mask, info.transform, info.crs)
    question = "Where could a new house be built without demolishing anything, near the river or the école?"
    path = write_gpkg(tmp_path / "p.gpkg", polygons, info.crs, question=question)
    (layer,) = [name for name, _ in pyogrio.list_layers(path)]
    assert layer == layer_name(question) and layer.startswith("where_could_a_new_house") and len(layer) <= 60
    assert re.fullmatch(r"[a-z][a-z0-9_]*", layer)
    assert layer_name("2 boats?") == "q_2_boats" and layer_name("水はどこ？") == layer_name(None) == "segearth"
    write_gpkg(path, polygons, info.crs, overwrite=True, layer="custom")
    assert [name for name, _ in pyogrio.list_layers(path)] == ["custom"]  # replaced, not appended


# ---------------------------------------------------------------- previews


def test_preview_2048_with_a_long_caption_and_a_coarse_mask(tmp_path: Path) -> None:
    image = np.full((1536, 2048, 3), 90, np.uint8)
    mask = np.zeros((96, 128), bool)  # the model's grid, 16x coarser
    mask[:48, :64] = True
    caption = ("Which of the warehouses along the northern canal could host solar panels without shading? " * 8
               + "https://example.org/" + "x" * 300)
    path = write_preview_png(tmp_path / "p.png", image, mask, caption)
    with Image.open(path) as png:
        assert png.width == 2048 and 1536 + 40 < png.height <= 1536 + 6 * 42 + 40  # wrapped, at most 6 lines
        pixels = np.asarray(png.convert("RGB"))
    assert (pixels[100, 100] != 90).any() and (pixels[1000, 1500] == 90).all()  # nearest-resized mask
    assert (pixels[700, 1030] == 90).all()  # just outside the 768x1024 upscaled block
    strip = pixels[1536:] < 128  # dark caption pixels
    assert strip.any() and not strip[:, -8:].any()  # text wrapped before the right edge
    with pytest.raises(ValueError, match="2-D mask"):
        write_preview_png(tmp_path / "q.png", image, np.zeros((2, 3, 4)), "x")
    assert not (tmp_path / "q.png").exists()


def test_refuse_overwrite(tmp_path: Path) -> None:
    (tmp_path / "exists.tif").write_bytes(b"")
    with pytest.raises(FileExistsError, match="exists.tif"):
        refuse_overwrite([tmp_path / "new.tif", tmp_path / "exists.tif"], overwrite=False)
    refuse_overwrite([tmp_path / "exists.tif"], overwrite=True)

