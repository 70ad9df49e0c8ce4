"""The one raster → logits runner behind ``segearth predict``, the Python API and the scale-out path.

:func:`run_raster` asks every question about one raster with a :class:`~segearth.predictor.Predictor`
and returns a :class:`RasterRun` whose answers stream full-resolution logit blocks: float32, ``NaN``
where the input has no data (or no tile reached), never a full-size array unless a consumer builds
one. Memory is bounded by the block or tile size, not by the raster:

* ``scene``: one prediction on the whole scene letterboxed to the model's input (read at full
  resolution up to 16 megapixels, as the official preprocessing does; larger rasters are decimated
  by GDAL while reading); the logits are upsampled to full resolution block by block (fast, sees the
  whole scene, coarse edges);
* ``tiles``: predictions on full-resolution windows blended in the overlaps (small targets, sharp
  edges, each tile sees only its own context).

Writers (:mod:`segearth.predict`) and in-memory results (:mod:`segearth.api`) consume the same blocks,
so the CLI, the API and the server's downloads give the same mask for the same input and question.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from .errors import InputError
from .geo.read import (
    DEFAULT_MAX_PIXELS,
    RasterInfo,
    RasterInputError,
    SceneImage,
    Stretch,
    compute_stretch,
    open_raster,
    read_overview,
    read_valid_mask,
    read_window,
    select_bands,
)
from .geo.tiles import LogitStitcher, plan_tiles, upsample_blocks
from .options import Mode, choice

if TYPE_CHECKING:  # the server's upload workers read scenes here without loading torch
    from .predictor import ImagePredictor

Blocks = Iterator[tuple[Window, np.ndarray]]
NATIVE_SCENE_PIXELS = 4096 * 4096  # scene mode reads rasters up to this size at full resolution
Progress = Callable[[int], None]  # called with the number of finished model calls


@dataclass
class RunOptions:
    """What is read from the raster and how it is cut for the model."""

    mode: Mode = Mode.scene
    bands: tuple[int, ...] | None = None  # 1-based; default: the first three (grey for 1-2 bands)
    tile_size: int | None = None  # tiles mode; default: the model's input size
    overlap: int = 128  # tiles mode, pixels
    percentiles: tuple[float, float] = (2.0, 98.0)  # stretch of non-uint8 rasters
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger rasters before reading a pixel

    def __post_init__(self) -> None:
        self.mode = choice(Mode, self.mode, "mode")  # "scene" / "tiles" strings too

    def reading(self) -> str:
        """How the raster is read, for output names: the mode, plus the bands, tile size and overlap where
        they are not the defaults (so that a default run keeps the names it always had)."""
        parts = [self.mode.value]
        if self.bands is not None:
            parts.append("bands=" + ",".join(map(str, self.bands)))
        if self.mode is Mode.tiles and self.tile_size is not None:
            parts.append(f"tile={self.tile_size}")
        if self.mode is Mode.tiles and self.overlap != RunOptions.overlap:
            parts.append(f"overlap={self.overlap}")
        return " ".join(parts)

    def tile_for(self, model_size: int) -> tuple[int, int]:
        """``(tile size, overlap)`` of tiles mode, checked."""
        tile = self.tile_size or model_size
        if tile < 32:
            raise InputError(f"--tile-size must be at least 32 pixels, got {tile}")
        if not 0 <= self.overlap < tile:
            raise InputError(f"--overlap must be between 0 and the tile size ({tile}), got {self.overlap}")
        return tile, self.overlap

    def output_cell(self, info: RasterInfo, model_size: int) -> float:
        """Raster pixels per model output cell (the decoder predicts at 1/4 of its input)."""
        span = max(info.width, info.height) if self.mode is Mode.scene else min(self.tile_for(model_size)[0],
                                                                                 max(info.width, info.height))
        return 4.0 * span / model_size


@dataclass
class RasterAnswer:
    """One question's answer on a raster: full-resolution logit blocks, produced on demand."""

    question: str
    _blocks: Callable[[], Blocks]
    _valid: Callable[[Window], np.ndarray]

    def blocks(self) -> Blocks:
        """``(window, logits)`` pairs covering the raster; NaN where the input has no data."""
        for window, logits in self._blocks():
            yield window, np.where(self._valid(window), logits, np.float32(np.nan)).astype(np.float32)


@dataclass
class RasterRun:
    """Every answer about one raster, plus what a writer needs (header, overview, notices)."""

    source: str | Path
    info: RasterInfo
    stretch: Stretch
    overview: SceneImage  # the scene-mode input (full resolution up to NATIVE_SCENE_PIXELS)
    answers: list[RasterAnswer] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    _stitchers: list[LogitStitcher] = field(default_factory=list)

    def preview(self, max_side: int) -> np.ndarray:
        """The scene as RGB uint8 with its long side at most ``max_side`` (the previews' image).

        The scene-mode input is reused when it already is that image (the whole raster at full resolution,
        small enough); otherwise the raster is read again at that size, with the same stretch.
        """
        full = self.overview.image.shape[:2] == (self.info.height, self.info.width)
        if full and max(self.info.width, self.info.height) <= max_side:
            return self.overview.image
        return read_overview(self.source, max_side, params=self.stretch).image

    def close(self) -> None:
        """Delete the tiles-mode accumulators (call when every answer has been consumed)."""
        for stitcher in self._stitchers:
            stitcher.close()
        self._stitchers.clear()

    def __enter__(self) -> RasterRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_raster(source: str | Path, opts: RunOptions) -> RasterInfo:
    """Header-only checks, cheap enough to run before a model loads: readable, size limit, bands."""
    info = open_raster(source, max_pixels=opts.max_pixels)
    select_bands(info, opts.bands)
    return info


def work_units(info: RasterInfo, n_questions: int, opts: RunOptions, model_size: int) -> int:
    """Number of model calls :func:`run_raster` makes (progress bar totals)."""
    if opts.mode is Mode.scene:
        return n_questions
    tile, overlap = opts.tile_for(model_size)
    return len(plan_tiles(info.width, info.height, tile, overlap)) * n_questions


def read_scene(source: str | Path, info: RasterInfo, stretch: Stretch, model_size: int) -> SceneImage:
    """The scene-mode model input (the server's too, so both give the same logits).

    Up to NATIVE_SCENE_PIXELS the scene is read whole and resized by the letterbox, exactly as the
    official preprocessing (and `segearth eval`) does; larger rasters are decimated by GDAL while reading.
    """
    native = info.width * info.height <= NATIVE_SCENE_PIXELS
    return read_overview(source, max(info.width, info.height) if native else model_size, params=stretch)


def run_raster(
    predictor: ImagePredictor,
    source: str | Path,
    questions: list[str],
    opts: RunOptions | None = None,
    progress: Progress | None = None,
) -> RasterRun:
    """Ask every question about ``source``; the model runs here, the blocks are produced lazily."""
    if opts is None:
        opts = RunOptions()
    if not questions:
        raise InputError("no question given")
    for q in questions:
        if not q.strip():
            raise InputError("the question is empty")
    info = check_raster(source, opts)
    size = predictor.image_size
    tick = progress or (lambda n: None)
    stretch = compute_stretch(source, opts.bands, percentiles=opts.percentiles)
    overview = read_scene(source, info, stretch, size)
    if not overview.valid.any():
        raise RasterInputError(f"{info.name}: every pixel is nodata")
    run = RasterRun(source, info, stretch, overview, notices=list(overview.notices))

    def valid(window: Window) -> np.ndarray:
        return read_valid_mask(source, window, opts.bands)

    if opts.mode is Mode.scene:
        predictor.set_image(overview.image)
        for q in questions:
            low = predictor.predict(q).logits.numpy()
            run.answers.append(RasterAnswer(q, partial(upsample_blocks, low, info.width, info.height), valid))
            tick(1)
        return run

    tile, overlap = opts.tile_for(size)
    run._stitchers = [LogitStitcher(info.width, info.height, ramp=max(overlap // 2, 1)) for _ in questions]
    try:
        for window in plan_tiles(info.width, info.height, tile, overlap):
            piece = read_window(source, window, stretch)
            if not piece.valid.any():  # nothing to see: the tile stays unpredicted (nodata)
                tick(len(questions))
                continue
            predictor.set_image(piece.image)
            for q, stitcher in zip(questions, run._stitchers, strict=True):
                stitcher.add(window, predictor.predict(q).logits.numpy())
                tick(1)
    except BaseException:
        run.close()
        raise
    for q, stitcher in zip(questions, run._stitchers, strict=True):
        run.answers.append(RasterAnswer(q, partial(stitcher.blocks, fill=np.nan), valid))
    return run
