"""Answers on a raster → files: a mask COG, polygons (GeoJSON, GeoPackage) and a preview per question.

:func:`predict_raster` runs :func:`segearth.pipeline.run_raster` and hands each answer's logit blocks to
:func:`write_answer`, which streams them once: into the mask (uint8 0/255 or float32 probabilities,
same grid, CRS and transform as the input) and into a decimated grid (long side ≤ 4096) from which
the polygons, the preview and the scores are made. An answer whose scores fall below the model's
presence threshold is "not here" (:meth:`Scores.present`): its mask is written again, empty (a second
pass over its blocks, for such answers only), with no polygon and an untinted preview; a probability
raster keeps the probabilities.

Nothing that looks like a result is ever partial: a question's files are written together through
:func:`segearth.geo.paths.atomic_paths` (a hidden staging folder, moved into place only when all are
complete); a crash, a full disk or Ctrl-C leaves no output file behind, and a rerun works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from .geo.paths import atomic_paths, output_stem, refuse_overwrite
from .geo.read import RasterInfo
from .geo.vector import MaskPolygon, default_min_area, mask_to_polygons, write_geojson, write_gpkg
from .geo.write import write_mask_geotiff, write_preview_png
from .pipeline import Blocks, Progress, RunOptions, run_raster
from .predictor import Predictor, Scores, sigmoid

PREVIEW_MAX_SIDE = 2048
VECTOR_MAX_SIDE = 4096  # polygons are traced on a grid at most this large


@dataclass
class PredictOptions(RunOptions):
    """:class:`RunOptions` plus where and how the outputs are written."""

    out_dir: Path = Path("segearth-out")
    probabilities: bool = False  # float32 probabilities instead of a 0/255 mask
    simplify: float = 0.0  # polygon simplification tolerance, CRS units
    min_area: float | None = None  # m² (pixel² without a CRS); None: a quarter of a model output cell
    overwrite: bool = False
    skip_existing: bool = False  # a question whose outputs all exist is not asked again (resume)
    write_gpkg: bool = True


@dataclass
class QuestionResult:
    question: str
    paths: dict[str, Path]  # mask, geojson, gpkg, preview
    polygons: int
    scores: Scores
    skipped: bool = False  # outputs existed and skip_existing was set
    present: bool = True  # False: "not here" (below the presence threshold), every output empty

    @property
    def mask(self) -> Path:
        return self.paths["mask"]


@dataclass
class RasterResult:
    source: str | Path
    info: RasterInfo
    results: list[QuestionResult] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def output_paths(stem: str, opts: PredictOptions) -> dict[str, Path]:
    """The files of one question: ``STEM_mask.tif`` (``STEM_prob.tif``), ``.geojson``, ``.gpkg``, ``_preview.png``."""
    d = opts.out_dir
    paths = {
        "mask": d / f"{stem}_{'prob' if opts.probabilities else 'mask'}.tif",
        "geojson": d / f"{stem}.geojson",
        "preview": d / f"{stem}_preview.png",
    }
    if opts.write_gpkg:
        paths["gpkg"] = d / f"{stem}.gpkg"
    return paths


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


def vector_grid(info: RasterInfo) -> _Decimator:
    """The grid the polygons, the preview and the scores are made from (long side <= VECTOR_MAX_SIDE)."""
    return _Decimator(info.width, info.height, max(1, math.ceil(max(info.width, info.height) / VECTOR_MAX_SIDE)))


def write_mask(path: Path, blocks: Blocks, info: RasterInfo, probabilities: bool, tags: dict[str, str],
               tap: Callable[[Window, np.ndarray], None] | None = None) -> None:
    """Stream logit blocks (NaN = nodata) into the mask GeoTIFF: 0/255, or float32 probabilities (NaN nodata).

    ``tap`` sees every block on its way (the polygon grid is filled in the same pass).
    """
    last_valid: dict[str, np.ndarray] = {}

    def mask_blocks() -> Blocks:
        for window, logits in blocks:
            if tap is not None:
                tap(window, logits)
            last_valid["block"] = np.isfinite(logits)  # the writer asks for the validity of the block it received
            if probabilities:
                yield window, sigmoid(logits)  # NaN stays NaN: the nodata value of the probability COG
            else:
                yield window, np.nan_to_num(logits, nan=-1.0) > 0  # nodata is never target

    write_mask_geotiff(path, mask_blocks(), info, probabilities=probabilities, overwrite=True,
                       valid=lambda window: last_valid["block"], tags=tags)


def trace(grid: _Decimator, info: RasterInfo, properties: dict[str, str], opts: PredictOptions,
          cell_px: float, present: bool = True) -> tuple[np.ndarray, list[MaskPolygon]]:
    """The mask on the polygon grid and its polygons (``properties`` copied into each); both empty
    when the answer is "not here"."""
    logits = grid.values
    mask = (np.nan_to_num(logits, nan=-1.0) > 0) & present
    transform = info.transform @ Affine.scale(grid.factor)
    min_area = opts.min_area
    if min_area is None:
        min_area = default_min_area(info.transform, info.crs, cell_px / 2, (info.height, info.width))
    polygons = mask_to_polygons(
        mask, transform, info.crs, probabilities=sigmoid(np.nan_to_num(logits, nan=0.0)),
        simplify_tolerance=opts.simplify, min_area=min_area, properties=properties,
    )
    return mask, polygons


def not_here(blocks: Blocks) -> Blocks:
    """The blocks of an empty answer: every valid pixel below the threshold, nodata kept."""
    for window, logits in blocks:
        yield window, np.where(np.isnan(logits), logits, np.float32(-1.0))


def write_answer(
    blocks: Callable[[], Blocks],
    info: RasterInfo,
    preview_image: np.ndarray,
    question: str,
    model_name: str,
    paths: dict[str, Path],
    opts: PredictOptions,
    cell_px: float,
    presence_threshold: float | None = None,
) -> QuestionResult:
    """Stream one answer's logit blocks (NaN = nodata; ``blocks()`` starts a pass) into every output file
    at ``paths``.

    ``cell_px`` is the model's output cell in raster pixels (the default minimum polygon area is a
    quarter of it: smaller regions are interpolation fringes, not answers). ``presence_threshold``: see
    :meth:`Scores.present`.
    """
    grid = vector_grid(info)
    tags = {"question": question, "model": model_name}
    write_mask(paths["mask"], blocks(), info, opts.probabilities, tags, tap=grid.add)
    scores = Scores.from_logits(grid.values)
    present = scores.present(presence_threshold)
    if not present and scores.target_fraction > 0 and not opts.probabilities:
        tags["answer"] = (f"not here: max probability {scores.max_probability:.2f} is below the presence "
                          f"threshold {presence_threshold}")
        write_mask(paths["mask"], not_here(blocks()), info, False, tags)
    mask, polygons = trace(grid, info, tags, opts, cell_px, present)
    write_geojson(paths["geojson"], polygons, info.crs, overwrite=True)
    if "gpkg" in paths:
        write_gpkg(paths["gpkg"], polygons, info.crs, overwrite=True, question=question)
    write_preview_png(paths["preview"], preview_image, mask, question, overwrite=True)
    return QuestionResult(question, dict(paths), len(polygons), scores, present=present)


def predict_raster(
    predictor: Predictor,
    source: str | Path,
    questions: list[str],
    opts: PredictOptions,
    model_name: str,
    stems: list[str] | None = None,
    progress: Progress | None = None,
) -> RasterResult:
    """Ask every question about one raster and write its outputs (see the module docstring)."""
    questions = list(dict.fromkeys(questions))  # a repeated question is answered once
    reading = opts.reading()
    stems = stems or [output_stem(source, q, reading=reading, model=model_name) for q in questions]
    planned = [output_paths(s, opts) for s in stems]
    done = [opts.skip_existing and all(p.exists() for p in paths.values()) for paths in planned]
    if not (opts.overwrite or opts.skip_existing):
        # With skip_existing, a question whose files are only partly there (a run stopped while moving them
        # into place) is answered again: the names hash input, question, mode and model, so nothing else is hit.
        refuse_overwrite([p for paths in planned for p in paths.values()], False)
    todo = [i for i, d in enumerate(done) if not d]
    skipped = [QuestionResult(questions[i], planned[i], 0, Scores(0.0, 0.0, 0.0), skipped=True)
               for i in range(len(questions)) if done[i]]
    if not todo:
        from .geo.read import open_raster

        return RasterResult(source, open_raster(source, max_pixels=opts.max_pixels), skipped)
    with run_raster(predictor, source, [questions[i] for i in todo], opts, progress) as run:
        result = RasterResult(source, run.info, notices=run.notices)
        preview = run.preview(PREVIEW_MAX_SIDE)
        cell = opts.output_cell(run.info, predictor.image_size)
        # Files of an interrupted earlier run under these names (same input, question, mode and model) are
        # replaced with skip_existing; otherwise nothing was there when the work started (checked above).
        replace = opts.overwrite or opts.skip_existing
        for i, answer in zip(todo, run.answers, strict=True):
            with atomic_paths(planned[i], overwrite=replace) as tmp:
                result.results.append(
                    write_answer(answer.blocks, run.info, preview, answer.question, model_name, tmp, opts, cell,
                                 predictor.presence_threshold)
                )
            result.results[-1].paths = planned[i]
    result.results.extend(skipped)
    return result
