"""Where the page's map puts an upload: its preview reprojected to Web Mercator, with lon/lat bounds.

The page uses Leaflet, whose maps are in Web Mercator (EPSG:3857) and which stretches an image
overlay linearly between two lon/lat corners. Such a stretch is exact only for an image that is
itself on a Web Mercator grid, so the preview is warped onto one here (nearest neighbour, at about
the preview's size) and its corners are given in lon/lat: a pixel of the warped image then lies
exactly where its lon/lat says, and the answers' GeoJSON (WGS84) lands on it.

A raster without a CRS has no place on Earth: the page then uses a plain pixel plane
(``L.CRS.Simple``) in the coordinates its GeoJSON uses (the raster's transform, usually column/row),
with ``flip_y`` when y grows downwards. Nodata pixels are transparent (alpha 0) in both cases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform

from ..errors import InputError
from ..geo.read import SceneImage

WEB_MERCATOR = CRS.from_epsg(3857)
WGS84 = CRS.from_epsg(4326)
MAP_FILE = "map.png"
log = logging.getLogger("segearth.serve")


@dataclass(frozen=True)
class MapView:
    """The page's placement of ``map.png``: Leaflet ``[[south, west], [north, east]]`` bounds."""

    mode: Literal["geographic", "pixel"]
    bounds: tuple[tuple[float, float], tuple[float, float]]
    flip_y: bool = False  # pixel mode: latitude = -y (rows grow downwards)
    # geographic mode: (preview grid transform, map grid transform, map width, map height), so an answer's
    # overlay is warped onto exactly the grid of map.png
    warp: tuple[Affine, Affine, int, int] | None = None


def _rgba(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.dstack([image, np.where(valid, 255, 0).astype(np.uint8)])


def write_map_image(folder: Path, display: SceneImage, max_side: int) -> MapView | None:
    """Write ``folder/map.png`` and say where it goes; None when the CRS cannot be shown on a web map."""
    info = display.info
    if info.crs is None:
        return _pixel_view(folder, display)
    try:
        return _geographic_view(folder, display, max_side)
    except (RasterioError, ValueError) as exc:  # e.g. a local engineering CRS, or a polar one
        log.warning("the upload cannot be placed on the web map: %s", exc)
        return None


def _geographic_view(folder: Path, display: SceneImage, max_side: int) -> MapView:
    h, w = display.image.shape[:2]
    crs = display.info.crs
    left, bottom, right, top = array_bounds(h, w, display.transform)
    dst, dst_w, dst_h = calculate_default_transform(crs, WEB_MERCATOR, w, h, left, bottom, right, top)
    if max(dst_w, dst_h) > max_side:  # same footprint, coarser grid
        resolution = dst.a * max(dst_w, dst_h) / max_side
        dst, dst_w, dst_h = calculate_default_transform(crs, WEB_MERCATOR, w, h, left, bottom, right, top,
                                                        resolution=resolution)
    warped = _warp(_rgba(display.image, display.valid), display.transform, crs, dst, dst_w, dst_h)
    x0, y0 = dst.c, dst.f
    x1, y1 = x0 + dst_w * dst.a, y0 + dst_h * dst.e
    (west, east), (north, south) = transform(WEB_MERCATOR, WGS84, [x0, x1], [y0, y1])
    if not np.isfinite([west, east, north, south]).all():
        raise InputError("the raster lies beyond the latitudes a Web Mercator map shows")
    Image.fromarray(warped, "RGBA").save(folder / MAP_FILE, format="PNG", compress_level=1)
    return MapView("geographic", ((south, west), (north, east)), warp=(display.transform, dst, dst_w, dst_h))


def _warp(rgba: np.ndarray, src: Affine, crs: CRS, dst: Affine, dst_w: int, dst_h: int) -> np.ndarray:
    """``(h, w, 4)`` RGBA on the ``src`` grid, nearest-neighbour onto the Web Mercator ``dst`` grid."""
    warped = np.zeros((4, dst_h, dst_w), np.uint8)  # alpha 0 outside the raster's footprint
    reproject(np.moveaxis(rgba, -1, 0), warped, src_transform=src, src_crs=crs, dst_transform=dst,
              dst_crs=WEB_MERCATOR, resampling=Resampling.nearest)
    return np.moveaxis(warped, 0, -1)


def write_map_overlay(path: Path, rgba: np.ndarray, view: MapView, crs: CRS | None) -> None:
    """An RGBA image on the preview grid (an answer's mask) onto the grid of ``map.png``: same bounds, same place."""
    if view.warp is not None and crs is not None:
        src, dst, dst_w, dst_h = view.warp
        rgba = _warp(rgba, src, crs, dst, dst_w, dst_h)
    Image.fromarray(rgba, "RGBA").save(path, format="PNG")


def _pixel_view(folder: Path, display: SceneImage) -> MapView:
    bounds = display.info.bounds
    flip = display.info.transform.e > 0
    lats = [-bounds.bottom, -bounds.top] if flip else [bounds.bottom, bounds.top]
    Image.fromarray(_rgba(display.image, display.valid), "RGBA").save(folder / MAP_FILE, format="PNG",
                                                                        compress_level=1)
    return MapView("pixel", ((min(lats), min(bounds.left, bounds.right)), (max(lats), max(bounds.left, bounds.right))),
                   flip_y=flip)
