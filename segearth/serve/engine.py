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

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from ..geo.read import read_valid_mask
from ..geo.tiles import upsample_blocks
from ..geo.vector import mask_to_polygons, write_geojson
from ..geo.write import OVERLAY_RGB, write_mask_geotiff
from ..modeling.prompt import description_ids
from ..predictor import Predictor, sigmoid
from .cache import FeatureCache
from .errors import ServerFault
from .limits import QuestionError, clip_text
from .queue import ModelQueue
from .store import Answer, ImageRecord, UnknownImage

Format = Literal["geotiff", "geojson", "png"]
log = logging.getLogger("segearth.serve")
FILE_NAMES: dict[str, str] = {"geotiff": "mask.tif", "geojson": "mask.geojson", "png": "mask.png"}
T = TypeVar("T")


class RenderCancelled(RuntimeError):
    """A render stopped by the server's shutdown."""


class RenderFailed(ServerFault):
    """A render crashed (logged with its traceback); the client gets one sentence and a 500."""


class Engine:
    """The loaded model, its per-image feature cache and its queue."""

    def __init__(self, predictor: Predictor, model_name: str, cache: FeatureCache, queue: ModelQueue,
                 max_answers: int) -> None:
        self.template = predictor
        self.model_name = model_name
        self.cache = cache
        self.queue = queue
        self.max_answers = max_answers
        self.closing = threading.Event()  # set at shutdown: renders stop at their next block

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

    def count_tokens(self, question: str) -> int:
        """Tokens the question takes in the prompt (for the limit checked before queueing)."""
        return len(description_ids(question, self.template.tokenizer))

    async def ask(self, record: ImageRecord, questions: list[str]) -> tuple[list[np.ndarray], bool, float]:
        """Logits on the overview grid for each question (already checked), computed on the model thread."""
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
            probs = sigmoid(low)
            polygons = mask_to_polygons(mask, record.model_transform, record.info.crs, probabilities=probs,
                                        properties={"question": clip_text(q), "model": self.model_name})
            write_atomic(folder / FILE_NAMES["geojson"],
                         partial(write_geojson, polygons=polygons, crs=record.info.crs, overwrite=True))
            area = sum(p.properties.get("area_m2", 0.0) for p in polygons) if record.info.crs else None
            scores: dict[str, Any] = {
                "target_fraction": float(mask.sum() / max(int(valid.sum()), 1)),
                "mean_probability": float(probs[mask].mean()) if mask.any() else 0.0,
                "max_probability": float(probs[valid].max()) if valid.any() else 0.0,
                "regions": len(polygons),
                "area_m2": area,
            }
            answer = Answer(number, q, scores, folder)
            record.add_answer(answer, self.max_answers)
            self.render(record, answer, fmt)
            answers.append(answer)
        return answers

    def _display_mask(self, record: ImageRecord, low: np.ndarray) -> np.ndarray:
        """The mask on the preview grid: logits upsampled bilinearly, thresholded at 0, nodata out."""
        h, w = record.display_shape
        up = torch.nn.functional.interpolate(torch.from_numpy(low)[None, None], size=(h, w), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        return np.load(record.folder / "valid.npy") & (up > 0)

    def _until_closing(self, blocks: Iterator[T]) -> Iterator[T]:
        """``blocks``, interrupted when the server shuts down (a full-resolution render can take minutes)."""
        for item in blocks:
            if self.closing.is_set():
                raise RenderCancelled("the server is shutting down")
            yield item

    def render(self, record: ImageRecord, answer: Answer, fmt: Format) -> Path:
        """The answer's file in ``fmt``, written on first request.

        The file appears under its final name only when complete (written under a temporary name in
        the same folder, then renamed), so a render that fails or is interrupted is never served. A
        failed render is remembered: later requests get the same error instead of a retry.
        """
        target = answer.folder / FILE_NAMES[fmt]
        with answer.lock:  # two downloads of the same new file must not write it at once
            if target.exists():
                return target
            if fmt in answer.failed:
                raise RenderFailed(answer.failed[fmt])
            if record.deleted or not answer.folder.is_dir():
                raise UnknownImage(f"answer {answer.number} of image {record.id} was deleted")
            if fmt == "geojson":  # written with the scores; only missing if that write failed
                raise UnknownImage(f"answer {answer.number} of image {record.id} has no GeoJSON")
            try:
                write_atomic(target, lambda tmp: self._write(record, answer, fmt, tmp))
            except RenderCancelled:
                raise
            except Exception:
                log.exception("rendering the %s of answer %d of image %s failed", fmt, answer.number, record.id)
                answer.failed[fmt] = f"rendering the {fmt} of answer {answer.number} failed; ask the question again"
                raise RenderFailed(answer.failed[fmt]) from None
        return target

    def _write(self, record: ImageRecord, answer: Answer, fmt: Format, path: Path) -> None:
        low = np.load(answer.folder / "logits.npy")
        if fmt == "png":
            mask = self._display_mask(record, low)
            rgba = np.zeros((*mask.shape, 4), np.uint8)
            rgba[mask] = (*OVERLAY_RGB, 255)
            Image.fromarray(rgba, "RGBA").save(path, format="PNG")
        else:
            info = record.info
            blocks = ((win, block > 0) for win, block in self._until_closing(
                upsample_blocks(low, info.width, info.height)))
            write_mask_geotiff(
                path, blocks, info, overwrite=True,
                valid=lambda win: read_valid_mask(record.path, win, record.bands),
                tags={"question": clip_text(answer.question), "model": self.model_name},
            )


def write_atomic(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` for a temporary name next to ``target`` and rename it to ``target`` when done."""
    tmp = target.with_name(f".{target.stem}-{secrets.token_hex(4)}.partial{target.suffix}")  # suffix: the driver
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
