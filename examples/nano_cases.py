"""The built-in model on four rasters from places and sensors it never saw in training.

    python examples/nano_cases.py --data ../shared/data --out nano-cases [--model FOLDER]

Each case runs twice: as a new user asks it (the defaults) and, where one helps, with the setting a
remote-sensing user would pick for that raster (a band combination, a tile size). Writes each answer's
files (mask GeoTIFF, polygons, preview PNG) under ``--out/RASTER/{default,informed}`` and prints one
line per run: the share of the scene marked and, where the raster has labels, the IoU with them
(SpaceNet: building footprints; NAIP: weak NDWI water, > 0.2, scored where NDWI is not in 0..0.2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize

import segearth
from segearth.data.scenes import normalized_difference

CASES = [  # (raster under geotiff/, question, default settings, informed settings or None)
    # NIR-R-G false colour: water black, crops red, as in nano's Sentinel-2 false-colour training
    ("naip_rgbn_2019.tif", "Where could a boat travel?", {"mode": "scene"}, {"mode": "scene", "bands": (4, 1, 2)}),
    # 192-pixel windows read the 0.5 m raster at about 0.25 m, the drone GSD nano learnt buildings at
    ("spacenet_pan_uint16.tif", "the buildings", {"mode": "tiles"}, {"mode": "tiles", "tile_size": 192}),
    ("neon_rgb_nodata255.tif", "the trees", {"mode": "scene"}, None),
    # this file stores blue, green, red, NIR: bands 1-3 as RGB swap red and blue
    ("spacenet_ms_4band_float64.tif", "the roads", {"mode": "scene"}, {"mode": "scene", "bands": (3, 2, 1)}),
]


def labels(raster: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(target, known) on the raster's grid, for the rasters that have labels."""
    with rasterio.open(raster) as ds:
        if raster.name.startswith("naip"):
            ndwi = normalized_difference(ds.read(2), ds.read(4))
            return ndwi > 0.2, (ndwi > 0.2) | (ndwi < 0.0)
        if raster.name.startswith("spacenet_pan"):
            features = json.loads((raster.parent / "spacenet_pan_buildings.geojson").read_text())["features"]
            shapes = [shapely.geometry.shape(f["geometry"]) for f in features]
            target = rasterize(shapes, out_shape=(ds.height, ds.width), transform=ds.transform) > 0
            return target, ds.read_masks(1) > 0
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("nano-cases"))
    parser.add_argument("--model", default=None, help="model folder or name (default: the built-in model)")
    args = parser.parse_args()
    model = segearth.load(args.model)
    for name, question, default, informed in CASES:
        raster = args.data / "geotiff" / name
        truth = labels(raster)
        for label, settings in (("default", default), ("informed", informed)):
            if settings is None:
                continue
            result = model.predict(raster, question, **settings)
            folder = args.out / raster.stem / label
            result.save(folder, overwrite=True)
            mask = result.mask.astype(bool)
            shown = ", ".join(f"{k}={v}" for k, v in settings.items())
            line = f"{name}: {question!r} ({shown}) marks {100 * mask.mean():.1f} % of the scene"
            if truth is not None:
                target, known = truth
                inter, union = (mask & target & known).sum(), ((mask | target) & known).sum()
                line += f", IoU {inter / max(union, 1):.3f} with the labels (everything: {target[known].mean():.3f})"
            print(line, f"-> {folder}")


if __name__ == "__main__":
    main()
