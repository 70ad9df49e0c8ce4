"""Writing results: a georeferenced mask GeoTIFF, polygons, a PNG preview, safe names.

Polygon outputs (GeoJSON, GeoPackage) are implemented in :mod:`segearth.geo.vector` and
output naming in :mod:`segearth.geo.paths`; both are re-exported here so that every writer
is importable from one place.

Mask GeoTIFF conventions (chosen so that "no data here" is never confused with "not the
target"):

* binary masks are uint8 **255 = target, 0 = background**. Pixels where the input had no
  data are written as 0 *and* flagged in an internal GDAL dataset mask (the TIFF mask
  band), which QGIS/GDAL/rasterio show as nodata. We do not use a nodata *value*: 0 would
  hide the background and any other value would break the 0/255 contract;
* probability maps (``probabilities=True``) are float32 in [0, 1] with **nodata = NaN**.

Files are tiled 256×256, DEFLATE-compressed, BigTIFF when needed, with the input's CRS and
transform, and are written window by window so a full-size array never has to exist.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from segearth.geo.paths import output_stem, refuse_overwrite
from segearth.geo.read import RasterInfo
from segearth.geo.vector import MaskPolygon, mask_to_polygons, write_geojson, write_gpkg

__all__ = [
    "MaskPolygon", "mask_to_polygons", "output_stem", "refuse_overwrite", "write_geojson",
    "write_gpkg", "write_mask_geotiff", "write_preview_png",
]

Blocks = Iterable[tuple[Window, np.ndarray]]
Valid = np.ndarray | Callable[[Window], np.ndarray] | None

OVERLAY_RGB = (255, 32, 96)  # magenta-red: stands out on vegetation, water, roofs and roads
OUTLINE_RGB = (255, 255, 0)


def _as_blocks(data: np.ndarray | Blocks, info: RasterInfo) -> Blocks:
    if isinstance(data, np.ndarray):
        if data.shape != (info.height, info.width):
            raise ValueError(f"mask shape {data.shape} does not match raster {info.height}x{info.width}")
        return [(Window(0, 0, info.width, info.height), data)]
    return data


def _valid_for(valid: Valid, window: Window) -> np.ndarray | None:
    if valid is None:
        return None
    if callable(valid):
        return np.asarray(valid(window), dtype=bool)
    rows = slice(int(window.row_off), int(window.row_off + window.height))
    cols = slice(int(window.col_off), int(window.col_off + window.width))
    return np.asarray(valid[rows, cols], dtype=bool)


def write_mask_geotiff(
    path: str | Path,
    data: np.ndarray | Blocks,
    info: RasterInfo,
    probabilities: bool = False,
    overwrite: bool = False,
    valid: Valid = None,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write a full-resolution mask (or probability map) aligned with the input raster.

    ``data`` is a ``(height, width)`` array or an iterable of ``(Window, block)`` pairs
    (e.g. from :func:`segearth.geo.tiles.upsample_blocks` or ``LogitStitcher.blocks``).
    Binary blocks are bool or integer (non-zero = target); probability blocks are float.
    ``valid`` (a full array, or a callable giving the validity of a window such as
    ``lambda w: read_valid_mask(src, w)``) marks input nodata, which is forced out of the
    mask. ``tags`` (e.g. question, model) are stored as GeoTIFF metadata.
    """
    path = Path(path)
    refuse_overwrite([path], overwrite)
    profile = {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": 1,
        "dtype": "float32" if probabilities else "uint8", "nodata": np.nan if probabilities else None,
        "crs": info.crs, "transform": info.transform, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }
    # The mask band goes inside the .tif (not a .msk sidecar) so the result is one file.
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # pixel-coordinate inputs
        with rasterio.open(path, "w", **profile) as dst:
            for window, block in _as_blocks(data, info):
                block = np.asarray(block)
                if block.shape != (int(window.height), int(window.width)):
                    raise ValueError(f"block of shape {block.shape} does not match window {window}")
                ok = _valid_for(valid, window)
                if probabilities:
                    if block.dtype.kind != "f":
                        raise TypeError(f"probabilities=True needs float blocks, got {block.dtype}")
                    out = block.astype(np.float32)
                    if ok is not None:
                        out = np.where(ok, out, np.float32(np.nan))
                else:
                    if block.dtype.kind not in "biu":
                        raise TypeError(f"binary masks must be bool or integer, got {block.dtype}; "
                                        "threshold logits first or pass probabilities=True")
                    target = block != 0 if ok is None else (block != 0) & ok
                    out = np.where(target, 255, 0).astype(np.uint8)
                    if ok is not None:
                        dst.write_mask(np.where(ok, 255, 0).astype(np.uint8), window=window)
                dst.write(out, 1, window=window)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return path


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the raster edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def write_preview_png(
    path: str | Path,
    image: np.ndarray,
    mask: np.ndarray,
    caption: str,
    overwrite: bool = False,
    alpha: float = 0.45,
) -> Path:
    """Save the RGB image with the mask tinted and outlined, and ``caption`` underneath.

    ``image`` is ``(h, w, 3)`` uint8 (e.g. ``SceneImage.image``); ``mask`` is a 2-D bool or
    0/255 array, resized with nearest neighbour if its shape differs from the image's.
    """
    path = Path(path)
    refuse_overwrite([path], overwrite)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    binary = np.asarray(mask) != 0
    if binary.shape != (h, w):
        binary = np.asarray(Image.fromarray(binary).resize((w, h), Image.Resampling.NEAREST))
    out = image.astype(np.float32)
    out[binary] = (1 - alpha) * out[binary] + alpha * np.asarray(OVERLAY_RGB, dtype=np.float32)
    out[_outline(binary)] = OUTLINE_RGB
    picture = Image.fromarray(np.rint(out).astype(np.uint8))

    font = ImageFont.load_default(size=max(12, min(24, w // 32)))
    measure = ImageDraw.Draw(picture)
    lines = _wrap(measure, caption, font, w - 16)
    line_h = int(font.size * 1.3)
    framed = Image.new("RGB", (w, h + line_h * len(lines) + 16), (255, 255, 255))
    framed.paste(picture, (0, 0))
    draw = ImageDraw.Draw(framed)
    for i, line in enumerate(lines):
        draw.text((8, h + 8 + i * line_h), line, fill=(0, 0, 0), font=font)
    framed.save(path, format="PNG")
    return path

