"""Answering questions about stored images: the model job, the scores, and the answer's files.

Only the forward pass runs on the model thread (see :mod:`.queue`); turning logits into files runs on
the request's own worker thread so the next question can use the model meanwhile. The model sees the
input ``segearth predict`` gives it in scene mode, and every file is made by the CLI's own code (see
:mod:`.render`), so the server's answer is the CLI's for the same raster, question and model. Asking
writes the GeoJSON (and the scores); the other formats are rendered on first download.
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
from typing import TypeVar

import numpy as np

from ..modeling.prompt import description_ids
from ..predictor import Predictor
from .cache import FeatureCache
from .errors import ServerFault
from .limits import QuestionError
from .queue import ModelQueue
from .render import FILES, Format, full_blocks, traced, write_image, write_raster, write_vectors
from .store import Answer, ImageRecord, UnknownImage

log = logging.getLogger("segearth.serve")
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
                logits = predictor.predict(q).low_res_logits.cpu().numpy()  # on the canvas: unletterboxed later
            except ValueError as exc:  # the Predictor's own checks, the same messages as the CLI
                prefix = f"question {i + 1}: " if len(questions) > 1 else ""
                raise QuestionError(prefix + str(exc)) from None
            low.append(logits)
        return low, cached, time.perf_counter() - start

    def count_tokens(self, question: str) -> int:
        """Tokens the question takes in the prompt (for the limit checked before queueing)."""
        return len(description_ids(question, self.template.tokenizer))

    async def ask(self, record: ImageRecord, questions: list[str]) -> tuple[list[np.ndarray], bool, float]:
        """Canvas logits for each question (already checked), computed on the model thread."""
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
            answer = Answer(number, q, {}, folder)
            # Polygons and scores as `segearth predict` makes them: on its polygon grid, from full-resolution blocks.
            threshold = self.template.presence_threshold
            mask, polygons, found = traced(record, answer, self.model_name, self.image_size,
                                           self._until_closing(full_blocks(record, answer)), threshold)
            answer.present = found.present(threshold)
            write_atomic(folder / FILES["geojson"].name,
                         partial(self._write_geojson, record=record, answer=answer, polygons=polygons, mask=mask))
            area = sum(p.properties.get("area_m2", 0.0) for p in polygons) if record.info.crs else None
            answer.scores = {**found.as_dict(), "present": answer.present, "regions": len(polygons),
                             "area_m2": area}
            record.add_answer(answer, self.max_answers)
            self.render(record, answer, fmt)
            answers.append(answer)
        return answers

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
        target = answer.folder / FILES[fmt].name
        with answer.lock:  # two downloads of the same new file must not write it at once
            if target.exists():
                return target
            if fmt in answer.failed:
                raise RenderFailed(answer.failed[fmt])
            if record.deleted or not answer.folder.is_dir():
                raise UnknownImage(f"answer {answer.number} of image {record.id} was deleted")
            if fmt == "geojson":  # written with the scores; only missing if that write failed
                raise UnknownImage(f"answer {answer.number} of image {record.id} has no GeoJSON")
            if fmt == "overlay" and record.map_view is None:
                raise UnknownImage(f"image {record.id} cannot be shown on a web map (its CRS has no Web Mercator "
                                   "place)")
            try:
                write_atomic(target, lambda tmp: self._write(record, answer, fmt, tmp))
            except RenderCancelled:
                raise
            except Exception:
                log.exception("rendering the %s of answer %d of image %s failed", fmt, answer.number, record.id)
                answer.failed[fmt] = f"rendering the {fmt} of answer {answer.number} failed; ask the question again"
                raise RenderFailed(answer.failed[fmt]) from None
        return target

    @staticmethod
    def _write_geojson(path: Path, record: ImageRecord, answer: Answer, polygons: list, mask: np.ndarray) -> None:
        write_vectors(path, "geojson", record, answer, polygons, mask)

    def _write(self, record: ImageRecord, answer: Answer, fmt: Format, path: Path) -> None:
        if fmt in ("png", "overlay"):
            write_image(path, fmt, record, answer)
        elif fmt in ("geotiff", "probabilities"):
            write_raster(path, fmt, record, answer, self.model_name, self._until_closing(full_blocks(record, answer)))
        else:  # gpkg, preview: traced again (the GeoJSON's polygons, from the same logits)
            mask, polygons, _ = traced(record, answer, self.model_name, self.image_size,
                                       self._until_closing(full_blocks(record, answer)),
                                       self.template.presence_threshold)
            write_vectors(path, fmt, record, answer, polygons, mask)


def write_atomic(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` for a temporary name next to ``target`` and rename it to ``target`` when done."""
    tmp = target.with_name(f".{target.stem}-{secrets.token_hex(4)}.partial{target.suffix}")  # suffix: the driver
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
