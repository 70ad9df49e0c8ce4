"""Answering questions about stored images: the model job, the scores, and the three mask formats.

Only the forward pass runs on the model thread (see :mod:`.queue`); turning logits into files runs on
the request's own worker thread so the next question can use the model meanwhile. What is kept per
answer is the small logit map on the model's overview grid (at most model size squared), from which
every format is rendered on demand:

* ``geotiff``: full-resolution uint8 0/255 mask aligned with the upload (same CRS and transform),
  nodata flagged in the internal mask band — written block by block, as ``segearth predict`` does;
* ``geojson``: polygons in WGS84 (pixel coordinates without a CRS), traced on the model's overview
  grid (long side = model input size): the logits carry no finer detail, and tracing a finer grid
  cost most of a request's time;
* ``png``: an RGBA overlay on the preview grid (alpha 255 = target) that lines up with ``display.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..geo.read import read_valid_mask
from ..geo.tiles import upsample_blocks
from ..geo.vector import mask_to_polygons, write_geojson
from ..geo.write import OVERLAY_RGB, write_mask_geotiff
from ..predictor import Predictor
from .cache import FeatureCache
from .queue import ModelQueue
from .store import Answer, ImageRecord, UnknownImage

Format = Literal["geotiff", "geojson", "png"]
FILE_NAMES: dict[str, str] = {"geotiff": "mask.tif", "geojson": "mask.geojson", "png": "mask.png"}


class QuestionError(ValueError):
    """A question the model cannot take (empty, too long): answered with 422."""


class Engine:
    """The loaded model, its per-image feature cache and its queue."""

    def __init__(self, predictor: Predictor, model_name: str, cache: FeatureCache, queue: ModelQueue) -> None:
        self.template = predictor
        self.model_name = model_name
        self.cache = cache
        self.queue = queue

    @property
    def image_size(self) -> int:
        return self.template.image_size

    def _predictor_for(self, record: ImageRecord) -> tuple[Predictor, bool]:
        """The image's cached Predictor, or a new one fed the stored canvas (runs on the model thread)."""
        cached = self.cache.get(record.id)
        if cached is not None:
            return cached, True
        predictor = Predictor(self.template.model, self.template.tokenizer, self.template.task)
        predictor.set_image(np.load(record.folder / "canvas.npy"))
        if not record.deleted:
            self.cache.put(record.id, predictor)
        return predictor, False

    def _forward(self, record: ImageRecord, questions: list[str]) -> tuple[list[np.ndarray], bool, float]:
        start = time.perf_counter()
        predictor, cached = self._predictor_for(record)
        low = []
        for i, q in enumerate(questions):
            try:
                logits = predictor.predict(q).logits.cpu().numpy()
            except ValueError as exc:  # the Predictor's own checks, the same messages as the CLI
                prefix = f"question {i + 1}: " if len(questions) > 1 else ""
                raise QuestionError(prefix + str(exc)) from None
            low.append(record.box.unletterbox(logits))
        return low, cached, time.perf_counter() - start

    async def ask(self, record: ImageRecord, questions: list[str]) -> tuple[list[np.ndarray], bool, float]:
        """Logits on the overview grid for each question, computed on the model thread."""
        for i, q in enumerate(questions):
            if not q.strip():  # caught here so an empty question never waits in the queue
                raise QuestionError(f"question {i + 1}: the question is empty" if len(questions) > 1
                                    else "the question is empty")
        return await self.queue.run(lambda: self._forward(record, questions))

    def store_answers(self, record: ImageRecord, questions: list[str], logits: list[np.ndarray],
                      fmt: Format) -> list[Answer]:
        """Score, save and render the requested format of each answer (off the model thread)."""
        answers = []
        for q, low in zip(questions, logits, strict=True):
            if record.deleted:
                raise UnknownImage(f"image {record.id} was deleted while the question was answered")
            with record.lock:  # concurrent requests about one image get distinct answer numbers
                number = record.next_answer
                record.next_answer += 1
            folder = record.folder / "answers" / str(number)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "logits.npy", low.astype(np.float32))
            # Scores and polygons on the overview grid, the resolution the model answered at.
            valid = np.load(record.folder / "model_valid.npy")
            mask = valid & (low > 0)
            probs = 1.0 / (1.0 + np.exp(-low))
            polygons = mask_to_polygons(mask, record.model_transform, record.info.crs, probabilities=probs,
                                        properties={"question": q, "model": self.model_name})
            write_geojson(folder / FILE_NAMES["geojson"], polygons, record.info.crs, overwrite=True)
            area = sum(p.properties.get("area_m2", 0.0) for p in polygons) if record.info.crs else None
            scores: dict[str, Any] = {
                "target_fraction": float(mask.sum() / max(int(valid.sum()), 1)),
                "mean_probability": float(probs[mask].mean()) if mask.any() else 0.0,
                "max_probability": float(probs[valid].max()) if valid.any() else 0.0,
                "regions": len(polygons),
                "area_m2": area,
            }
            answer = Answer(number, q, scores, folder)
            with record.lock:
                record.answers.append(answer)
            self.render(record, answer, fmt)
            answers.append(answer)
        return answers

    def _display_mask(self, record: ImageRecord, low: np.ndarray) -> np.ndarray:
        """The mask on the preview grid: logits upsampled bilinearly, thresholded at 0, nodata out."""
        h, w = record.display_shape
        up = torch.nn.functional.interpolate(torch.from_numpy(low)[None, None], size=(h, w), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        return np.load(record.folder / "valid.npy") & (up > 0)

    def render(self, record: ImageRecord, answer: Answer, fmt: Format) -> Path:
        """The answer's file in ``fmt``, written on first request."""
        target = answer.folder / FILE_NAMES[fmt]
        with answer.lock:  # two downloads of the same new file must not write it at once
            if target.exists():
                return target
            if record.deleted:
                raise UnknownImage(f"image {record.id} was deleted")
            low = np.load(answer.folder / "logits.npy")
            if fmt == "png":
                mask = self._display_mask(record, low)
                rgba = np.zeros((*mask.shape, 4), np.uint8)
                rgba[mask] = (*OVERLAY_RGB, 255)
                Image.fromarray(rgba, "RGBA").save(target, format="PNG")
            elif fmt == "geotiff":
                info = record.info
                blocks = ((win, block > 0) for win, block in upsample_blocks(low, info.width, info.height))
                write_mask_geotiff(
                    target, blocks, info, overwrite=True,
                    valid=lambda win: read_valid_mask(record.path, win, record.bands),
                    tags={"question": answer.question, "model": self.model_name},
                )
            else:  # geojson is written with the scores; only reached if the file was removed
                raise UnknownImage(f"answer {answer.number} of image {record.id} has no GeoJSON")
        return target

