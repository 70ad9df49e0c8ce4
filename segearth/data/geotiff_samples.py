"""The labelled GeoTIFF samples of ``../shared/data/geotiff``: places and sensors for validation only.

On-disk layout (``<root>/geotiff``)::

    naip_rgbn_2019.tif                     4 x uint8 R, G, B, NIR (NAIP, North Dakota, 5 m)
    spacenet_pan_uint16.tif                1 x uint16 panchromatic (0.5 m, nodata 0)
    spacenet_pan_buildings.geojson         its building footprints (same CRS)

Labels:
- NAIP: ``water`` from NDWI (> 0.2 water, < 0 surely not) and ``vegetation`` from NDVI (> 0.3
  vegetation, < 0.1 surely not), weak labels; pixels between the thresholds are unknown.
- SpaceNet panchromatic: ``building`` from the footprints, complete (nodata pixels unknown).
The road sample (``spacenet_roads*``) is not used: its centrelines lie about 7 km from the raster's
footprint and match none of its roads, even shifted onto it (checked on an overlay).
Images are rendered with the raster-wide percentile stretch ``segearth predict`` applies.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window

from segearth.data.io import require_file
from segearth.data.sample import UNKNOWN
from segearth.data.scenes import LabelledScene, LabelMaps, index_labels, normalized_difference, render, window_labels

NAIP = "naip_rgbn_2019.tif"
PAN, PAN_BUILDINGS = "spacenet_pan_uint16.tif", "spacenet_pan_buildings.geojson"


def _geometries(path: Path) -> list:
    return [shapely.geometry.shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]


def _naip_labels(path: Path) -> LabelMaps:
    with rasterio.open(path) as ds:
        red, green, nir = ds.read(1), ds.read(2), ds.read(4)
    return {"water": index_labels(normalized_difference(green, nir), 0.2, 0.0),
            "vegetation": index_labels(normalized_difference(nir, red), 0.3, 0.1)}


def _burn(geometries: list, ds: rasterio.io.DatasetReader) -> np.ndarray:
    if not geometries:
        return np.zeros((ds.height, ds.width), bool)
    return rasterize(geometries, out_shape=(ds.height, ds.width), transform=ds.transform, dtype=np.uint8) > 0


def _pan_labels(path: Path, footprints: Path) -> LabelMaps:
    with rasterio.open(path) as ds:
        building = _burn(_geometries(footprints), ds).astype(np.uint8)
        building[ds.read_masks(1) == 0] = UNKNOWN
    return {"building": building}


def _quadrants(scene: LabelledScene, width: int, height: int, bands: tuple[int, int, int]) -> list[LabelledScene]:
    """The four quarters of ``scene``: more validation images, and some where a class is absent."""
    out = []
    for row in range(2):
        for col in range(2):
            x0, y0 = col * width // 2, row * height // 2
            window = Window(x0, y0, (col + 1) * width // 2 - x0, (row + 1) * height // 2 - y0)
            image = partial(render, scene.image_path, bands, window)
            labels = partial(window_labels, scene.labels, window)
            out.append(replace(scene, id=f"{scene.id}/q{row}{col}", image=image, labels=labels))
    return out


def geotiff_scenes(folder: Path) -> list[LabelledScene]:
    """The two labelled samples (each its own place and source), in quarters."""
    naip = require_file(folder / NAIP, "NAIP sample")
    pan = require_file(folder / PAN, "SpaceNet panchromatic")
    footprints = require_file(folder / PAN_BUILDINGS, "SpaceNet building footprints")
    whole = [
        LabelledScene("geotiff/naip", "naip", "naip", naip, partial(render, naip, (1, 2, 3)),
                      partial(_naip_labels, naip), classes=("water", "vegetation"), weak=("water", "vegetation")),
        LabelledScene("geotiff/spacenet_pan", "spacenet_pan", "spacenet_pan", pan, partial(render, pan, (1, 1, 1)),
                      partial(_pan_labels, pan, footprints), classes=("building",), complete=("building",)),
    ]
    out = []
    for scene, bands in zip(whole, ((1, 2, 3), (1, 1, 1)), strict=True):
        with rasterio.open(scene.image_path) as ds:
            out += _quadrants(scene, ds.width, ds.height, bands)
    return out
