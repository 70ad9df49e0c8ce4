"""An answer's files, made by the same code as ``segearth predict`` (:mod:`segearth.predict`).

What is kept per answer is the decoder's low-resolution logits on the model canvas (``logits.npy``,
model size / 4 squared). Every file is made from it the way the CLI makes its own in scene mode:
the canvas logits are unletterboxed to the scene input (:func:`segearth.pipeline.read_scene`) and
upsampled to full resolution block by block (a :class:`~segearth.pipeline.RasterAnswer`, NaN on
nodata), then

* ``geotiff`` / ``probabilities``: :func:`segearth.predict.write_mask` (the CLI's ``_mask.tif`` /
  ``_prob.tif``: same grid, CRS and transform as the upload);
* ``geojson`` / ``gpkg`` / ``preview``: polygons traced by :func:`segearth.predict.trace` on the
  CLI's polygon grid (:func:`segearth.predict.vector_grid`, long side <= 4096) with its default
  minimum area; the preview is the CLI's ``_preview.png``;

plus two images for the page: ``png``, an RGBA mask on the preview grid (lines up with
``display.png``), and ``overlay``, the same warped onto the grid of ``map.png`` (nodata and
background transparent) so the map shows it in its true place. An answer that is "not here" (below
the model's presence threshold, :meth:`segearth.predictor.Scores.present`) gets empty masks and no
polygon in every format but ``probabilities``, as from the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..geo.read import read_valid_mask
from ..geo.tiles import upsample_blocks
from ..geo.vector import MaskPolygon, write_geojson, write_gpkg
from ..geo.write import OVERLAY_RGB, write_preview_png
from ..pipeline import Blocks, RasterAnswer, RunOptions
from ..predict import PredictOptions, not_here, trace, vector_grid, write_mask
from ..predictor import Scores
from .limits import clip_text
from .mapview import write_map_overlay
from .store import Answer, ImageRecord, UnknownImage

Format = Literal["geotiff", "probabilities", "geojson", "gpkg", "png", "preview", "overlay"]


@dataclass(frozen=True)
class FileKind:
    name: str  # in the answer's folder
    suffix: str  # after the download's stem (the CLI's suffixes)
    media: str


FILES: dict[str, FileKind] = {
    "geotiff": FileKind("mask.tif", "_mask.tif", "image/tiff"),
    "probabilities": FileKind("prob.tif", "_prob.tif", "image/tiff"),
    "geojson": FileKind("mask.geojson", ".geojson", "application/geo+json"),
    "gpkg": FileKind("mask.gpkg", ".gpkg", "application/geopackage+sqlite3"),
    "png": FileKind("mask.png", "_mask.png", "image/png"),
    "preview": FileKind("preview.png", "_preview.png", "image/png"),
    "overlay": FileKind("overlay.png", "_overlay.png", "image/png"),
}
DOWNLOADS = ("geotiff", "probabilities", "geojson", "gpkg", "png", "preview")  # `overlay` is the map's layer


def overview_logits(record: ImageRecord, answer: Answer) -> np.ndarray:
    """The logits on the scene input's grid, as ``Prediction.logits`` gives them to the CLI."""
    canvas = torch.from_numpy(np.load(answer.folder / "logits.npy"))
    return record.box.unletterbox(canvas).numpy()


def full_blocks(record: ImageRecord, answer: Answer) -> Blocks:
    """Full-resolution logit blocks, NaN on nodata: the CLI's ``RasterAnswer.blocks()`` in scene mode."""
    low = overview_logits(record, answer)
    info = record.info
    return RasterAnswer(answer.question, partial(upsample_blocks, low, info.width, info.height),
                        lambda window: read_valid_mask(record.path, window, record.bands)).blocks()


def traced(record: ImageRecord, answer: Answer, model_name: str, model_size: int, blocks: Iterator[tuple],
           presence_threshold: float | None) -> tuple[np.ndarray, list[MaskPolygon], Scores]:
    """Mask and polygons on the CLI's polygon grid (empty when "not here"), with the CLI's scores."""
    grid = vector_grid(record.info)
    for window, logits in blocks:
        grid.add(window, logits)
    scores = Scores.from_logits(grid.values)
    cell = RunOptions().output_cell(record.info, model_size)
    props = {"question": clip_text(answer.question), "model": model_name}
    mask, polygons = trace(grid, record.info, props, PredictOptions(), cell, scores.present(presence_threshold))
    return mask, polygons, scores


def write_vectors(path: Path, fmt: str, record: ImageRecord, answer: Answer, polygons: list[MaskPolygon],
                  mask: np.ndarray) -> None:
    crs = record.info.crs
    if fmt == "geojson":
        write_geojson(path, polygons, crs, overwrite=True)
    elif fmt == "gpkg":
        write_gpkg(path, polygons, crs, overwrite=True, question=clip_text(answer.question))
    else:  # the CLI's preview: the RGB preview with the mask tinted, the question underneath
        image = np.asarray(Image.open(record.folder / "display.png").convert("RGB"))
        write_preview_png(path, image, mask, clip_text(answer.question), overwrite=True)


def display_rgba(record: ImageRecord, answer: Answer) -> np.ndarray:
    """The mask on the preview grid as RGBA (alpha 255 = target; background and nodata transparent)."""
    low = overview_logits(record, answer)
    h, w = record.display_shape
    up = torch.nn.functional.interpolate(torch.from_numpy(low)[None, None], size=(h, w), mode="bilinear",
                                         align_corners=False)[0, 0].numpy()
    mask = np.load(record.folder / "valid.npy") & (up > 0) & answer.present
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = (*OVERLAY_RGB, 255)
    return rgba


def write_image(path: Path, fmt: str, record: ImageRecord, answer: Answer) -> None:
    """``png`` (preview grid) or ``overlay`` (the grid of map.png)."""
    rgba = display_rgba(record, answer)
    if fmt == "png":
        Image.fromarray(rgba, "RGBA").save(path, format="PNG")
        return
    if record.map_view is None:
        raise UnknownImage(f"image {record.id} cannot be shown on a web map (its CRS has no Web Mercator place)")
    write_map_overlay(path, rgba, record.map_view, record.info.crs)


def write_raster(path: Path, fmt: str, record: ImageRecord, answer: Answer, model_name: str,
                 blocks: Blocks) -> None:
    """``geotiff`` (0/255; all 0 when "not here") or ``probabilities`` (float32, NaN nodata), block by block."""
    if fmt == "geotiff" and not answer.present:
        blocks = not_here(blocks)
    write_mask(path, blocks, record.info, fmt == "probabilities",
               tags={"question": clip_text(answer.question), "model": model_name})
