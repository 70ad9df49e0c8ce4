"""The library API: ``segearth.load(...)`` → a model you ask questions about images and rasters.

    >>> import segearth
    >>> model = segearth.load()                      # built-in segearth-nano; or a folder, or a hub id
    >>> result = model.predict("scene.tif", "where could a boat travel?")
    >>> result.mask, result.transform, result.crs, result.scores
    >>> result.regions                               # GeoJSON-like features in the raster's CRS
    >>> result.save("out/")                          # the same files as `segearth predict`
    >>> result.show()                                # an overlay in a notebook (matplotlib)

Rasters go through :func:`segearth.pipeline.run_raster` (any size, bands, dtype; scene or tiles mode)
and files through :func:`segearth.predict.write_answer` — the code paths of the command line. A
result lives in memory at full resolution, so :meth:`SegEarth.predict` refuses rasters above
``max_result_pixels``; ``segearth predict`` streams rasters of any size to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from .errors import InputError
from .geo.read import DEFAULT_MAX_PIXELS, RasterInfo
from .modeling.prompt import Task as PromptTask
from .options import DType, Mode, Quantize, Task, choice
from .pipeline import RunOptions, run_raster
from .predictor import ImagePredictor, Predictor, Scores, sigmoid

MAX_RESULT_PIXELS = 200_000_000  # 800 MB of float32 logits per answer


def load_predictor(model: str | Path | None = None, task: str = "reasoning", device: str = "cpu",
                   dtype: str = "auto", quantize: str = "none",
                   presence_threshold: float | None = None) -> tuple[Predictor, str]:
    """A :class:`Predictor` for ``model`` (built-in name, folder or hub id) and the model's display name.

    ``presence_threshold``: answers whose ``max_probability`` is below it are "not here" (empty);
    None: the model's own (segearth-nano's calibrated one; the official rule for released models), 0: off.

    ``dtype="auto"`` is bfloat16 on CUDA and, for large models, on CPUs with native bf16 (AMX,
    AVX512-BF16), float32 elsewhere (:meth:`DType.torch`);
    ``quantize="int8"`` stores the Linear weights as int8 (CPU, float32; see :mod:`segearth.quantize`).
    """
    from .allocator import keep_freed_memory
    from .checkpoint import load_model_and_tokenizer
    from .checkpoint_io import stored_parameters
    from .weights import resolve_model

    if presence_threshold is not None and not 0.0 <= presence_threshold <= 1.0:
        raise InputError(f"presence threshold must be a probability between 0 and 1, got {presence_threshold}")
    quantize = choice(Quantize, quantize, "quantize")
    chosen = choice(DType, dtype, "dtype")
    prompt_task: PromptTask = choice(Task, task, "task").value
    folder = resolve_model(model)
    # int8 quantises a float32 model, so "auto" means float32 then
    if quantize is Quantize.int8 and chosen is DType.auto:
        torch_dtype = torch.float32
    else:
        parameters = stored_parameters(folder) if chosen is DType.auto and device == "cpu" else None
        torch_dtype = chosen.torch(device, parameters)
    net, tokenizer = load_model_and_tokenizer(folder, device=device, dtype=torch_dtype)
    if quantize is Quantize.int8:
        from .quantize import quantize_int8

        net = quantize_int8(net)
    # After loading: the weights keep their own mappings, the activations of every question reuse pages
    keep_freed_memory()
    return Predictor(net, tokenizer, task=prompt_task, presence_threshold=presence_threshold), display_name(model)


def display_name(model: str | Path | None) -> str:
    """How outputs name the model: the built-in name, the hub id, or the checkpoint folder's name."""
    if model is None:
        return "segearth-nano"
    if Path(model).is_dir():
        return Path(model).resolve().name
    return str(model)


def load(model: str | Path | None = None, *, device: str = "cpu", dtype: str = "auto", task: str = "reasoning",
         quantize: str = "none", presence_threshold: float | None = None) -> SegEarth:
    """Load a model: ``None``/``"nano"`` (built-in), a checkpoint folder, or a hub id ``org/name[@revision]``.

    ``presence_threshold``: see :func:`load_predictor` (None: the model's own; 0: every answer with a
    target pixel counts).
    """
    predictor, name = load_predictor(model, task=task, device=device, dtype=dtype, quantize=quantize,
                                     presence_threshold=presence_threshold)
    return SegEarth(predictor, name)


@dataclass
class Result:
    """One answer on an image's own grid, with its georeferencing (identity / no CRS for arrays)."""

    question: str
    logits: np.ndarray  # [H, W] float32; NaN where the input had no data
    transform: Affine
    crs: CRS | None
    model: str
    source: str
    preview_image: np.ndarray = field(repr=False)  # RGB uint8, long side ≤ 2048, for save()/show()
    cell_px: float = field(repr=False, default=4.0)  # model output cell in pixels (default min area)
    presence_threshold: float | None = None  # below it the answer is "not here" (Scores.present)

    @property
    def present(self) -> bool:
        """Whether the target was found: False means "not here", an empty mask and no region."""
        return self.scores.present(self.presence_threshold)

    @property
    def mask(self) -> np.ndarray:
        """[H, W] bool target region (logit > 0; all False when "not here"); nodata is never target."""
        return (np.nan_to_num(self.logits, nan=-1.0) > 0) & self.present

    @property
    def probabilities(self) -> np.ndarray:
        """[H, W] float32 in [0, 1]; NaN where the input had no data."""
        return sigmoid(self.logits)

    @cached_property
    def scores(self) -> Scores:
        return Scores.from_logits(self.logits)

    @cached_property
    def regions(self) -> list[dict[str, Any]]:
        """GeoJSON-like features (geometry in the raster's CRS; pixels without one), largest first."""
        from shapely.geometry import mapping

        from .geo.vector import default_min_area, mask_to_polygons

        polygons = mask_to_polygons(self.mask, self.transform, self.crs, probabilities=self.probabilities,
                                    min_area=default_min_area(self.transform, self.crs, self.cell_px / 2,
                                                              self.logits.shape),
                                    properties={"question": self.question, "model": self.model})
        features = [{"type": "Feature", "geometry": mapping(p.geometry), "properties": p.properties}
                    for p in polygons]
        key = "area_m2" if self.crs is not None else "area_px"
        return sorted(features, key=lambda f: -float(f["properties"].get(key, 0.0)))

    def _info(self) -> RasterInfo:
        from rasterio.coords import BoundingBox

        h, w = self.logits.shape
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (w, h)
        return RasterInfo(path=Path(self.source), width=w, height=h, count=3, dtypes=("uint8",) * 3, crs=self.crs,
                          transform=self.transform, nodata=None, bounds=BoundingBox(left, bottom, right, top),
                          has_georeference=self.crs is not None or not self.transform.is_identity)

    def save(self, folder: str | Path, *, probabilities: bool = False, overwrite: bool = False,
             name: str | None = None) -> dict[str, Path]:
        """Write the mask COG, GeoJSON, GeoPackage and preview exactly as ``segearth predict`` does."""
        from .geo.paths import atomic_paths, output_stem
        from .predict import PredictOptions, output_paths, write_answer

        opts = PredictOptions(out_dir=Path(folder), probabilities=probabilities, overwrite=overwrite)
        paths = output_paths(name or output_stem(self.source, self.question, reading="api", model=self.model), opts)
        h, w = self.logits.shape
        with atomic_paths(paths, overwrite=overwrite) as tmp:
            write_answer(lambda: iter([(Window(0, 0, w, h), self.logits)]), self._info(), self.preview_image,
                         self.question, self.model, tmp, opts, self.cell_px, self.presence_threshold)
        return paths

    def show(self, ax: Any = None, alpha: float = 0.45) -> Any:
        """Draw the image with the mask overlaid (needs matplotlib: ``pip install 'segearth[notebook]'``)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("Result.show() needs matplotlib: pip install 'segearth[notebook]'") from None
        from PIL import Image

        from .geo.write import OVERLAY_RGB

        image = self.preview_image
        mask = np.asarray(Image.fromarray(self.mask).resize(image.shape[1::-1], Image.Resampling.NEAREST))
        overlay = np.zeros((*mask.shape, 4), np.float32)
        overlay[mask] = (*(c / 255 for c in OVERLAY_RGB), alpha)
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 8 * image.shape[0] / image.shape[1]))
        ax.imshow(image)
        ax.imshow(overlay)
        found = f"{100 * self.scores.target_fraction:.1f} % target" if self.present else "not here"
        ax.set_title(f"{self.question}  ({found})")
        ax.set_axis_off()
        return ax


class SegEarth:
    """A loaded model. :meth:`predict` takes a raster path/URL or an RGB array and one or more questions."""

    def __init__(self, predictor: ImagePredictor, name: str) -> None:
        self.predictor = predictor
        self.name = name

    def __repr__(self) -> str:
        return f"SegEarth({self.name!r}, image_size={self.predictor.image_size})"

    @overload
    def predict(
        self,
        image: str | Path | np.ndarray,
        question: str,
        *,
        mode: str = "scene",
        bands: tuple[int, ...] | None = None,
        tile_size: int | None = None,
        overlap: int = 128,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_result_pixels: int = MAX_RESULT_PIXELS,
    ) -> Result: ...

    @overload
    def predict(
        self,
        image: str | Path | np.ndarray,
        question: list[str],
        *,
        mode: str = "scene",
        bands: tuple[int, ...] | None = None,
        tile_size: int | None = None,
        overlap: int = 128,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_result_pixels: int = MAX_RESULT_PIXELS,
    ) -> list[Result]: ...

    def predict(
        self,
        image: str | Path | np.ndarray,
        question: str | list[str],
        *,
        mode: str = "scene",
        bands: tuple[int, ...] | None = None,
        tile_size: int | None = None,
        overlap: int = 128,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_result_pixels: int = MAX_RESULT_PIXELS,
    ) -> Result | list[Result]:
        """Answer ``question`` (a list gives a list of results) about a raster or an RGB uint8 array."""
        questions = [question] if isinstance(question, str) else list(question)
        if isinstance(image, np.ndarray):
            results = self._predict_array(image, questions)
        else:
            opts = RunOptions(mode=choice(Mode, mode, "mode"), bands=bands, tile_size=tile_size, overlap=overlap,
                              max_pixels=max_pixels)
            results = self._predict_raster(image, questions, opts, max_result_pixels)
        return results[0] if isinstance(question, str) else results

    def _predict_array(self, image: np.ndarray, questions: list[str]) -> list[Result]:
        from .geo.letterbox import fit_long_side
        from .predict import PREVIEW_MAX_SIDE

        self.predictor.set_image(image)
        h, w = image.shape[:2]
        preview = image
        if max(h, w) > PREVIEW_MAX_SIDE:
            from PIL import Image

            ph, pw = fit_long_side(h, w, PREVIEW_MAX_SIDE)
            preview = np.asarray(Image.fromarray(image).resize((pw, ph), Image.Resampling.BILINEAR))
        cell = 4.0 * max(h, w) / self.predictor.image_size
        return [Result(q, self.predictor.predict(q).logits.numpy(), Affine.identity(), None, self.name, "array",
                       preview, cell, self.predictor.presence_threshold) for q in questions]

    def _predict_raster(self, source: str | Path, questions: list[str], opts: RunOptions,
                        max_result_pixels: int) -> list[Result]:
        from .pipeline import check_raster
        from .predict import PREVIEW_MAX_SIDE

        info = check_raster(source, opts)
        if info.width * info.height > max_result_pixels:
            raise InputError(
                f"{info.name}: {info.width}x{info.height} pixels is more than an in-memory result holds "
                f"({max_result_pixels:,} pixels); use `segearth predict`, which streams any size to disk, "
                "or raise max_result_pixels"
            )
        with run_raster(self.predictor, source, questions, opts) as run:
            preview = run.preview(PREVIEW_MAX_SIDE)
            cell = opts.output_cell(run.info, self.predictor.image_size)
            results = []
            for answer in run.answers:
                logits = np.full((info.height, info.width), np.nan, np.float32)
                for window, block in answer.blocks():
                    logits[window.toslices()] = block
                results.append(Result(answer.question, logits, info.transform, info.crs, self.name, str(source),
                                      preview, cell, self.predictor.presence_threshold))
        return results
