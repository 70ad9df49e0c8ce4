"""fAIr drone mosaics with OpenStreetMap building masks (Zanzibar, Kampala, Nairobi).

On-disk layout (``<root>/fair_buildings``)::

    index.csv                  one row per mosaic: name, city, zoom, tile_x0, tile_y0, ... gsd_m
    <name>.jpg                 RGB mosaic of 256 px Web-Mercator tiles (zoom 19-21, 0.075-0.3 m)
    <name>_mask.png            0 = background, 255 = building (OSM polygons burnt by pixel centre)

Every pixel is labelled for ``building`` (a complete class: mosaics without buildings are honest
absent cases). The mosaics of one place exist at three zooms, so the split unit is the city:
:data:`VAL_CITIES` are held out from training.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from segearth.data.io import read_gray, read_rgb, require_file
from segearth.data.scenes import LabelledScene, LabelMaps

SOURCE = "fair_buildings"
VAL_CITIES = ("kampala",)
BUILDING_VALUE = 255


def _labels(mask_path: Path) -> LabelMaps:
    return {"building": (read_gray(mask_path) == BUILDING_VALUE).astype(np.uint8)}


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
                image=partial(read_rgb, image), labels=partial(_labels, mask),
                classes=("building",), complete=("building",),
            ))
    return scenes
