"""A Sentinel-2 scene with OpenStreetMap land-use polygons (Havelland, Germany), cut into chips.

On-disk layout (``<root>/sentinel2_brandenburg``)::

    s2l1c_T33UUU_20170216_10m_B4-B3-B2-B8.tif   4 x uint16 (B04 red, B03 green, B02 blue, B08 NIR), 10 m
    osm_landuse_water.gpkg                      polygons with their OSM class in ``fclass``

The polygons cover 31 % of the scene, so an unlabelled pixel is *unknown*, not background: a class's
map is 1 inside its polygons, 0 inside the polygons of classes that exclude it, unknown elsewhere.
Water adds a weak label from NDWI (green vs NIR; > 0.15 water, < -0.1 surely not), because the
polygons only hold lakes of 1-50 ha and miss the Havel. Vegetation is forest, meadow, grass and scrub
polygons plus a weak NDVI label (> 0.3 green, < 0.1 surely bare; top-of-atmosphere NDVI in February
is low: its median over the scene is 0.19, so these thresholds are conservative). No class is
complete; water and vegetation, being weak labels of every pixel, can be absent from a chip (see
:func:`segearth.data.scenes.scene_questions`).

Chips: the western part (x < :data:`VAL_X0` - a gap) is cut into 256 px chips for training, the
eastern 384 px into two 384 px chips for validation. Each chip is rendered twice, true colour
(red, green, blue) and false colour (NIR, red, green), with the raster-wide percentile stretch.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window

from segearth.data.io import require_file
from segearth.data.sample import UNKNOWN
from segearth.data.scenes import LabelledScene, LabelMaps, normalized_difference, render, window_labels

SOURCE = "sentinel2_brandenburg"
IMAGE = "s2l1c_T33UUU_20170216_10m_B4-B3-B2-B8.tif"
POLYGONS = "osm_landuse_water.gpkg"
RENDERS = {"rgb": (1, 2, 3), "irrg": (4, 1, 2)}
VAL_X0, GAP, TRAIN_CHIP, VAL_CHIP = 1152, 32, 256, 384
#: bank class -> the OSM ``fclass`` values that are it, and those that are surely not it.
CLASSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "farmland": (("farm",), ("forest", "water", "residential", "meadow", "grass", "wetland")),
    "trees": (("forest",), ("farm", "water", "meadow", "grass")),
    "grass": (("meadow", "grass"), ("forest", "water", "residential", "farm")),
    "water": (("water",), ("forest", "residential", "meadow", "grass", "farm", "scrub")),
    "vegetation": (("forest", "meadow", "grass", "scrub"), ("water",)),
}
NDWI_WATER, NDWI_DRY = 0.15, -0.1
NDVI_GREEN, NDVI_BARE = 0.3, 0.1


@lru_cache(maxsize=1)
def _scene_labels(folder: Path) -> LabelMaps:
    """Label maps of the whole scene, per bank class."""
    image = folder / IMAGE
    meta, _, geometry, fields = pyogrio.raw.read(folder / POLYGONS)
    fclass = fields[list(meta["fields"]).index("fclass")]
    with rasterio.open(image) as ds:
        shape, transform = (ds.height, ds.width), ds.transform
        red, green, nir = ds.read(1), ds.read(2), ds.read(4)
    polygons = shapely.from_wkb(geometry)

    def burn(classes: tuple[str, ...]) -> np.ndarray:
        chosen = [g for g, c in zip(polygons, fclass, strict=True) if c in classes]
        if not chosen:
            return np.zeros(shape, bool)
        return rasterize(chosen, out_shape=shape, transform=transform, dtype=np.uint8).astype(bool)

    ndwi = normalized_difference(green, nir)
    wet, dry = ndwi > NDWI_WATER, ndwi < NDWI_DRY
    ndvi = normalized_difference(nir, red)
    labels = {}
    for name, (positive, negative) in CLASSES.items():
        out = np.full(shape, UNKNOWN, np.uint8)
        out[burn(negative)] = 0
        if name == "vegetation":
            out[ndvi < NDVI_BARE] = 0
            out[ndvi > NDVI_GREEN] = 1
        if name == "water":
            out[dry] = 0
            out[wet] = 1
        else:
            out[wet] = 0
        out[burn(positive)] = 1
        labels[name] = out
    labels["vegetation"][labels["water"] == 1] = 0  # a pond inside a meadow polygon is not vegetation
    return labels


def _windows(width: int, height: int, split: str) -> list[Window]:
    if split == "val":
        return [Window(VAL_X0, y, VAL_CHIP, VAL_CHIP) for y in range(0, height - VAL_CHIP + 1, VAL_CHIP)]
    return [Window(x, y, TRAIN_CHIP, TRAIN_CHIP)
            for y in range(0, height - TRAIN_CHIP + 1, TRAIN_CHIP)
            for x in range(0, VAL_X0 - GAP - TRAIN_CHIP + 1, TRAIN_CHIP)]


def sentinel2_scenes(folder: Path, split: str) -> list[LabelledScene]:
    """The chips of ``split`` (``train``: west, ``val``: east), true and false colour."""
    image = require_file(folder / IMAGE, "Sentinel-2 scene")
    require_file(folder / POLYGONS, "OSM land-use polygons")
    with rasterio.open(image) as ds:
        width, height = ds.width, ds.height
    scenes = []
    for w in _windows(width, height, split):
        place = f"{SOURCE}/x{int(w.col_off)}y{int(w.row_off)}"
        for render_name, bands in RENDERS.items():
            scenes.append(LabelledScene(
                id=f"{place}/{render_name}", source=SOURCE if render_name == "rgb" else f"{SOURCE}_irrg",
                place=place, image_path=image, image=partial(render, image, bands, w),
                labels=partial(window_labels, partial(_scene_labels, folder), w),
                classes=tuple(CLASSES), weak=("water", "vegetation"),
            ))
    return scenes
