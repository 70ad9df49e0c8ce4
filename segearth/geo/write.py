"""Writing results: a georeferenced mask GeoTIFF, polygons, a PNG preview, safe names.

Polygon outputs (GeoJSON, GeoPackage) are implemented in :mod:`segearth.geo.vector` and
output naming in :mod:`segearth.geo.paths`; both are re-exported here so that every writer
is importable from one place.

Mask GeoTIFF conventions (chosen so that "no data here" is never confused with "not the
target"):

* binary masks are uint8 **255 = target, 0 = background**. Pixels where the input had no
  data are written as 0 *and* flagged in an internal GDAL dataset mask (the TIFF mask
  band), which QGIS/GDAL/rasterio show as nodata. We do not use a nodata *value*: 0 would
  hide the background and any other value would break the 0/255 contract. GDAL's COG
  driver keeps the mask band and builds its overviews too, so no nodata value is needed.
  The band carries a colour table, 0 → black and 255 → the preview's overlay colour, so
  GIS software shows the mask in the same colour as the preview. It is declared with 0
  fully transparent, but TIFF palettes store RGB only: GDAL reads every entry back opaque
  (nodata pixels are still transparent through the mask band);
* probability maps (``probabilities=True``) are float32 in [0, 1] with **nodata = NaN**.

The band description says what the band holds (``mask: <question>`` or ``probability:
<question>``) and the ``tags`` (question, model) are stored as GeoTIFF metadata.

Every mask file is a **Cloud Optimized GeoTIFF**: written window by window (a full-size
array never has to exist) into a tiled staging GeoTIFF, then rewritten by GDAL's COG driver
(512² tiles, DEFLATE with a predictor, overviews resampled NEAREST for masks and AVERAGE for
probabilities, BigTIFF when needed), with the input's CRS and transform. All writers here
are atomic (:func:`segearth.geo.paths.atomic_path`): a failure leaves no partial file, and
write errors raise :class:`~segearth.geo.paths.OutputWriteError` (``cannot write PATH:
REASON``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio._err import CPLE_BaseError  # GDAL errors rasterio.shutil.copy raises as they are
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.shutil import copy as gdal_copy
from rasterio.windows import Window

from segearth.geo.paths import OutputWriteError, atomic_path, output_stem, refuse_overwrite
from segearth.geo.read import RasterInfo
from segearth.geo.vector import MaskPolygon, mask_to_polygons, write_geojson, write_gpkg

__all__ = [
    "MaskPolygon", "OutputWriteError", "mask_to_polygons", "output_stem", "refuse_overwrite",
    "write_geojson", "write_gpkg", "write_mask_geotiff", "write_preview_png",
]

Blocks = Iterable[tuple[Window, np.ndarray]]
Valid = np.ndarray | Callable[[Window], np.ndarray] | None

OVERLAY_RGB = (255, 32, 96)  # magenta-red: stands out on vegetation, water, roofs and roads
OUTLINE_RGB = (255, 255, 0)
MASK_COLORS = {0: (0, 0, 0, 0), 255: (*OVERLAY_RGB, 255)}
DESCRIPTION_MAX = 200  # characters: GIS layer panels show one line
GDAL_ERRORS = (RasterioError, CPLE_BaseError)
CAPTION_MAX_LINES = 6


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


def _description(kind: str, tags: Mapping[str, str] | None, description: str | None) -> str:
    if description is None:
        question = " ".join(str((tags or {}).get("question", "")).split())
        description = f"{kind}: {question}" if question else kind
    return description if len(description) <= DESCRIPTION_MAX else description[: DESCRIPTION_MAX - 3] + "..."


def write_mask_geotiff(
    path: str | Path,
    data: np.ndarray | Blocks,
    info: RasterInfo,
    probabilities: bool = False,
    overwrite: bool = False,
    valid: Valid = None,
    tags: Mapping[str, str] | None = None,
    *,
    description: str | None = None,
) -> Path:
    """Write a full-resolution mask (or probability map) aligned with the input raster, as a COG.

    ``data`` is a ``(height, width)`` array or an iterable of ``(Window, block)`` pairs
    (e.g. from :func:`segearth.geo.tiles.upsample_blocks` or ``LogitStitcher.blocks``).
    Binary blocks are bool or integer (non-zero = target); probability blocks are float.
    ``valid`` (a full array, or a callable giving the validity of a window such as
    ``lambda w: read_valid_mask(src, w)``) marks input nodata, which is forced out of the
    mask. ``tags`` (e.g. question, model) are stored as GeoTIFF metadata; ``description``
    (default ``"mask: <question>"`` / ``"probability: <question>"`` from ``tags``) names the
    band. Raises ``FileExistsError`` unless ``overwrite``, :class:`OutputWriteError` when the
    file cannot be written; either way nothing is left under ``path``.
    """
    path = Path(path)
    with atomic_path(path, overwrite, errors=GDAL_ERRORS) as tmp:
        staging = tmp.with_name(f"{tmp.stem}.staging{tmp.suffix}")  # shares the prefix atomic_path cleans
        _write_staging(staging, data, info, probabilities, valid, tags,
                       _description("probability" if probabilities else "mask", tags, description))
        gdal_copy(
            staging, tmp, driver="COG", compress="DEFLATE", predictor=3 if probabilities else 2,
            overviews="AUTO", resampling="AVERAGE" if probabilities else "NEAREST", BIGTIFF="IF_SAFER",
        )
        staging.unlink()
    return path


def _write_staging(
    path: Path, data: np.ndarray | Blocks, info: RasterInfo, probabilities: bool, valid: Valid,
    tags: Mapping[str, str] | None, description: str,
) -> None:
    """The tiled GeoTIFF the COG is copied from (the COG driver cannot be written window by window)."""
    profile = {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": 1,
        "dtype": "float32" if probabilities else "uint8", "nodata": np.nan if probabilities else None,
        "crs": info.crs, "transform": info.transform, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER",  # temporary: speed first
    }
    # The mask band goes inside the .tif (not a .msk sidecar) so the COG driver finds it there.
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
            if not probabilities:
                dst.write_colormap(1, MASK_COLORS)
            dst.set_band_description(1, description)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the raster edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` px, at most :data:`CAPTION_MAX_LINES` lines (the last cut with ``...``)."""
    def fits(line: str) -> bool:
        return draw.textlength(line, font=font) <= width

    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        elif fits(word):
            lines.append(word)
        else:  # wider than the image (a URL, a script written without spaces): cut by character
            lines.append("")
            for char in word:
                if lines[-1] and not fits(lines[-1] + char):
                    lines.append(char)
                else:
                    lines[-1] += char
    if len(lines) > CAPTION_MAX_LINES:
        last = lines[CAPTION_MAX_LINES - 1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines = [*lines[: CAPTION_MAX_LINES - 1], last.rstrip() + "..."]
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

    ``image`` is ``(h, w, 3)`` uint8 (e.g. ``SceneImage.image``, any size; previews are made
    at up to 2048 px); ``mask`` is a 2-D bool or 0/255 array, resized with nearest neighbour
    if its shape differs from the image's. The caption is wrapped to the image width (font
    size growing with it) and cut after a few lines. Written atomically.
    """
    path = Path(path)
    refuse_overwrite([path], overwrite)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    binary = np.asarray(mask) != 0
    if binary.ndim != 2 or 0 in binary.shape:
        raise ValueError(f"expected a non-empty 2-D mask, got shape {binary.shape}")
    h, w = image.shape[:2]
    if binary.shape != (h, w):
        binary = np.asarray(Image.fromarray(binary).resize((w, h), Image.Resampling.NEAREST))
    out = image.copy()
    tinted = (1 - alpha) * image[binary].astype(np.float32) + alpha * np.asarray(OVERLAY_RGB, dtype=np.float32)
    out[binary] = np.rint(tinted).astype(np.uint8)
    out[_outline(binary)] = OUTLINE_RGB
    picture = Image.fromarray(out)

    font = ImageFont.load_default(size=max(12, min(32, w // 32)))
    assert isinstance(font, ImageFont.FreeTypeFont)  # a sized default font: Pillow built with FreeType
    margin = max(8, font.size // 2)
    lines = _wrap(ImageDraw.Draw(picture), caption, font, w - 2 * margin)
    line_h = int(font.size * 1.3)
    framed = Image.new("RGB", (w, h + line_h * len(lines) + 2 * margin), (255, 255, 255))
    framed.paste(picture, (0, 0))
    draw = ImageDraw.Draw(framed)
    for i, line in enumerate(lines):
        draw.text((margin, h + margin + i * line_h), line, fill=(0, 0, 0), font=font)
    with atomic_path(path, overwrite) as tmp:
        framed.save(tmp, format="PNG")
    return path
