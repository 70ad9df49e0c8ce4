"""fAIr drone mosaics with OpenStreetMap building masks (Zanzibar, Kampala, Nairobi).

On-disk layout (``<root>/fair_buildings``)::

    index.csv                  one row per mosaic: name, city, zoom, tile_x0, tile_y0, ... gsd_m
    <name>.jpg                 RGB mosaic of 256 px Web-Mercator tiles (zoom 19-21, 0.075-0.3 m)
    <name>_mask.png            0 = background, 255 = building (OSM polygons burnt by pixel centre)

Every pixel is labelled for ``building`` (a complete class: mosaics without buildings are honest
absent cases). ``vegetation`` is a weak label from the visible-band excess-green index (these
mosaics have no NIR band): > :data:`EXG_GREEN` vegetation; < :data:`EXG_BARE` on a pixel not darker
than :data:`MIN_GREY` surely not (shadows are unknown); buildings are never vegetation. The mosaics
of one place exist at three zooms, so the split unit is the city: :data:`VAL_CITIES` are held out
from training.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from segearth.data.io import read_gray, read_rgb, require_file
from segearth.data.sample import UNKNOWN
from segearth.data.scenes import LabelledScene, LabelMaps, excess_green

SOURCE = "fair_buildings"
VAL_CITIES = ("kampala",)
BUILDING_VALUE = 255
#: Excess-green thresholds (checked on overlays of mosaics of all three cities and zooms).
EXG_GREEN, EXG_BARE, MIN_GREY = 0.12, 0.03, 50


def _labels(image_path: Path, mask_path: Path) -> LabelMaps:
    building = read_gray(mask_path) == BUILDING_VALUE
    rgb = read_rgb(image_path)
    exg = excess_green(rgb)
    vegetation = np.full(building.shape, UNKNOWN, np.uint8)
    vegetation[(exg < EXG_BARE) & (rgb.mean(axis=-1) >= MIN_GREY)] = 0
    vegetation[exg > EXG_GREEN] = 1
    vegetation[building] = 0
    return {"building": building.astype(np.uint8), "vegetation": vegetation}


def fair_scenes(folder: Path) -> list[LabelledScene]:
    """Every mosaic listed in ``folder/index.csv`` (place = city)."""
    index = require_file(folder / "index.csv", "fAIr buildings index")
    scenes = []
    with open(index, newline="") as f:
        for row in csv.DictReader(f):
            image = require_file(folder / f"{row['name']}.jpg", "fAIr mosaic")
            mask = require_file(folder / f"{row['name']}_mask.png", "fAIr building mask")
            scenes.append(LabelledScene(
                id=f"{SOURCE}/{row['name']}", source=SOURCE, place=row["city"], image_path=image,
                image=partial(read_rgb, image), labels=partial(_labels, image, mask),
                classes=("building", "vegetation"), complete=("building",), weak=("vegetation",),
            ))
    return scenes
