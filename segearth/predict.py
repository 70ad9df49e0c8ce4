"""Answer questions about a raster and write georeferenced results.

For each question: a full-resolution mask GeoTIFF (uint8 0/255, or float32 probabilities) aligned
with the input, polygons (GeoJSON in WGS84 and GeoPackage in the raster's CRS) and a PNG preview.

Two strategies for rasters of any size (memory is bounded by the block/tile size, never the raster):

* ``scene`` (default): one prediction on a decimated overview read into the model's letterbox; the
  logits are brought to full resolution block by block.
* ``tiles``: predictions on full-resolution windows whose logits are blended in the overlaps — for
  small targets in huge scenes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from affine import Affine
from rasterio.windows import Window

from .geo.letterbox import letterbox
from .geo.paths import output_stem, refuse_overwrite
from .geo.read import (
    RasterInfo, RasterInputError, compute_stretch, open_raster, read_overview, read_valid_mask, read_window,
)
from .geo.tiles import LogitStitcher, plan_tiles, upsample_blocks
from .geo.vector import mask_to_polygons, write_geojson, write_gpkg
from .geo.write import write_mask_geotiff, write_preview_png
from .predictor import Predictor

Mode = Literal["scene", "tiles"]
Progress = Callable[[int], None]  # called with the number of finished work units


@dataclass
class PredictOptions:
    out_dir: Path = Path("segearth-out")
    mode: Mode = "scene"
    bands: tuple[int, ...] | None = None
    tile_size: int | None = None  # tiles mode; default: the model's input size
    overlap: int = 128
    probabilities: bool = False
    simplify: float = 0.0
    min_area: float = 0.0
    overwrite: bool = False
    percentiles: tuple[float, float] = (2.0, 98.0)
    vector_max_side: int = 4096  # polygons are traced on a grid at most this large
    write_gpkg: bool = True


@dataclass
class QuestionResult:
    question: str
    mask: Path
    geojson: Path
    gpkg: Path | None
    preview: Path
    polygons: int
    target_fraction: float  # of the valid pixels (on the vector grid)


@dataclass
class RasterResult:
    path: Path
    info: RasterInfo
    results: list[QuestionResult] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def output_paths(stem: str, opts: PredictOptions) -> dict[str, Path]:
    d = opts.out_dir
    paths = {
        "mask": d / f"{stem}_{'prob' if opts.probabilities else 'mask'}.tif",
        "geojson": d / f"{stem}.geojson",
        "preview": d / f"{stem}_preview.png",
    }
    if opts.write_gpkg:
        paths["gpkg"] = d / f"{stem}.gpkg"
    return paths


def work_units(info: RasterInfo, n_questions: int, opts: PredictOptions, model_size: int) -> int:
    """Number of progress steps :func:`predict_raster` reports (model calls)."""
    if opts.mode == "scene":
        return n_questions
    tile = opts.tile_size or model_size
    return len(plan_tiles(info.width, info.height, tile, _overlap(tile, opts.overlap))) * n_questions


def _overlap(tile: int, overlap: int) -> int:
    if not 0 <= overlap < tile:
        raise ValueError(f"--overlap must be between 0 and the tile size ({tile}), got {overlap}")
    return overlap


def predict_raster(
    predictor: Predictor,
    path: str | Path,
    questions: list[str],
    opts: PredictOptions,
    model_name: str,
    stems: list[str] | None = None,
    progress: Progress | None = None,
) -> RasterResult:
    """Run every question on one raster and write its outputs (see module docstring)."""
    path = Path(path)
    if not questions:
        raise ValueError("no question given")
    for q in questions:
        if not q.strip():
            raise ValueError("the question is empty")
    info = open_raster(path)
    stems = stems or [output_stem(path, q) for q in questions]
    planned = [output_paths(s, opts) for s in stems]
    refuse_overwrite([p for paths in planned for p in paths.values()], opts.overwrite)
    stretch = compute_stretch(path, opts.bands, percentiles=opts.percentiles)
    size = predictor.image_size
    tick = progress or (lambda n: None)
    overview = read_overview(path, size, params=stretch)
    if not overview.valid.any():
        raise RasterInputError(f"{path}: every pixel is nodata")
    result = RasterResult(path, info, notices=list(overview.notices))

    if opts.mode == "scene":
        canvas, box = letterbox(overview.image, size)
        predictor.set_image(canvas)
        sources = []
        for q in questions:
            logits = predictor.predict(q).logits.cpu().numpy()
            low = box.unletterbox(logits, overview.image.shape[0], overview.image.shape[1])
            sources.append(lambda low=low: upsample_blocks(low, info.width, info.height))
            tick(1)
        _write_all(predictor, path, info, questions, planned, sources, overview.image, opts, model_name, result)
        return result

    tile = opts.tile_size or size
    windows = plan_tiles(info.width, info.height, tile, _overlap(tile, opts.overlap))
    stitchers = [LogitStitcher(info.width, info.height, ramp=max(opts.overlap // 2, 1)) for _ in questions]
    try:
        for window in windows:
            piece = read_window(path, window, stretch)
            if not piece.valid.any():  # nothing to see: leave the tile unpredicted (nodata)
                tick(len(questions))
                continue
            canvas, box = letterbox(piece.image, size)
            predictor.set_image(canvas)
            h, w = piece.image.shape[:2]
            for q, stitcher in zip(questions, stitchers):
                logits = predictor.predict(q).logits.cpu().numpy()
                stitcher.add(window, box.unletterbox(logits, h, w))
                tick(1)
        sources = [lambda s=s: s.blocks(fill=np.nan) for s in stitchers]
        _write_all(predictor, path, info, questions, planned, sources, overview.image, opts, model_name, result)
    finally:
        for s in stitchers:
            s.close()
    return result


class _Decimator:
    """Keeps every ``factor``-th pixel of streamed full-resolution blocks (the polygon grid)."""

    def __init__(self, width: int, height: int, factor: int) -> None:
        self.factor = factor
        self.values = np.full((math.ceil(height / factor), math.ceil(width / factor)), np.nan, np.float32)

    def add(self, window: Window, block: np.ndarray) -> None:
        f = self.factor
        r0, c0 = int(window.row_off), int(window.col_off)
        sr, sc = (-r0) % f, (-c0) % f
        sub = block[sr::f, sc::f]
        gr, gc = (r0 + sr) // f, (c0 + sc) // f
        self.values[gr : gr + sub.shape[0], gc : gc + sub.shape[1]] = sub


def _write_all(predictor, path, info, questions, planned, sources, image, opts, model_name, result) -> None:
    factor = max(1, math.ceil(max(info.width, info.height) / opts.vector_max_side))
    for q, paths, source in zip(questions, planned, sources):
        grid = _Decimator(info.width, info.height, factor)
        _write_mask(path, info, source(), grid, paths["mask"], q, model_name, opts)
        logits = grid.values
        valid = np.isfinite(logits)
        mask = valid & (np.nan_to_num(logits, nan=-1.0) > 0)
        probs = 1.0 / (1.0 + np.exp(-np.nan_to_num(logits, nan=0.0)))
        transform = info.transform @ Affine.scale(factor)
        polygons = mask_to_polygons(
            mask, transform, info.crs, probabilities=probs, simplify_tolerance=opts.simplify,
            min_area=opts.min_area, properties={"question": q, "model": model_name},
        )
        write_geojson(paths["geojson"], polygons, info.crs, overwrite=opts.overwrite)
        gpkg = write_gpkg(paths["gpkg"], polygons, info.crs, overwrite=opts.overwrite) if "gpkg" in paths else None
        write_preview_png(paths["preview"], image, mask, q, overwrite=opts.overwrite)
        fraction = float(mask.sum() / max(valid.sum(), 1))
        result.results.append(QuestionResult(q, paths["mask"], paths["geojson"], gpkg, paths["preview"], len(polygons), fraction))


def _write_mask(path, info, blocks, grid, target, question, model_name, opts) -> None:
    """Stream full-resolution logit blocks into the mask GeoTIFF, nodata forced out."""
    last_valid: dict[str, np.ndarray] = {}

    def thresholded() -> Iterator[tuple[Window, np.ndarray]]:
        for window, logits in blocks:
            ok = read_valid_mask(path, window, opts.bands) & np.isfinite(logits)
            last_valid["ok"] = ok
            grid.add(window, np.where(ok, logits, np.nan))
            if opts.probabilities:
                yield window, (1.0 / (1.0 + np.exp(-np.nan_to_num(logits, nan=0.0)))).astype(np.float32)
            else:
                yield window, np.nan_to_num(logits, nan=-1.0) > 0

    write_mask_geotiff(
        target, thresholded(), info, probabilities=opts.probabilities, overwrite=opts.overwrite,
        valid=lambda window: last_valid["ok"], tags={"question": question, "model": model_name},
    )
