"""Uploaded rasters and their answers, in a temporary folder removed on shutdown.

Layout (every name chosen by the server, never by the client)::

    <tmp>/segearth-serve-XXXX/<image id>/raster.tif|png|jpg   the upload
                                        display.png            RGB preview (long side <= display_max)
                                        valid.npy              nodata mask on the preview grid
                                        model_valid.npy        nodata mask on the model overview grid
                                        canvas.npy             letterboxed model input (cache misses)
                                        answers/<n>/logits.npy mask logits on the model overview grid
                                        answers/<n>/mask.*     rendered GeoTIFF / GeoJSON / PNG
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from PIL import Image

from ..geo.letterbox import Letterbox, letterbox
from ..geo.read import RasterInfo, RasterInputError, Stretch, compute_stretch, open_raster, read_overview


class UnknownImage(KeyError):
    """No image (or answer) with that id: answered with 404."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


@dataclass
class Answer:
    """One question asked about an image, with its scores; files are rendered on demand."""

    number: int
    question: str
    scores: dict[str, Any]
    folder: Path
    created: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one renderer per answer


@dataclass
class ImageRecord:
    """An uploaded raster, what the model needs to see it, and the questions asked so far."""

    id: str
    filename: str  # the client's name, a label only
    format: str
    folder: Path
    path: Path
    size_bytes: int
    info: RasterInfo
    stretch: Stretch
    bands: tuple[int, ...] | None
    box: Letterbox  # where the model overview sits on the model canvas
    model_transform: Affine  # georeferencing of the model overview grid (logits, polygons, scores)
    display_shape: tuple[int, int]  # (h, w) of display.png, the grid of the PNG masks
    notices: list[str]
    created: float = field(default_factory=time.time)
    answers: list[Answer] = field(default_factory=list)
    next_answer: int = 1
    deleted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answer(self, number: int) -> Answer:
        with self.lock:
            answers = list(self.answers)
        for a in answers:
            if a.number == number:
                return a
        raise UnknownImage(f"image {self.id} has no answer {number}")


def client_message(exc: Exception, path: Path, filename: str) -> str:
    """The CLI's message for a bad raster, naming the client's file instead of our temp path."""
    label = filename or "upload"
    return str(exc).replace(str(path), label).replace(path.name, label)


def prepare_image(
    image_id: str, folder: Path, path: Path, filename: str, fmt: str, size: int,
    bands: tuple[int, ...] | None, model_size: int, display_max: int,
) -> ImageRecord:
    """Read a stored upload's header, stretch, preview and model canvas (raises RasterInputError)."""
    try:
        info = open_raster(path)
        stretch = compute_stretch(path, bands)
        display = read_overview(path, display_max, params=stretch)
        model_view = display if display_max == model_size else read_overview(path, model_size, params=stretch)
    except (RasterInputError, ValueError) as exc:
        raise RasterInputError(client_message(exc, path, filename)) from None
    if not display.valid.any():
        raise RasterInputError(f"{filename}: every pixel is nodata")
    canvas, box = letterbox(model_view.image, model_size)
    np.save(folder / "canvas.npy", canvas)
    np.save(folder / "valid.npy", display.valid)
    np.save(folder / "model_valid.npy", model_view.valid)
    Image.fromarray(display.image).save(folder / "display.png", format="PNG", compress_level=1)
    notices = [client_message(Exception(n), path, filename) for n in display.notices]
    return ImageRecord(
        id=image_id, filename=filename, format=fmt, folder=folder, path=path, size_bytes=size, info=info,
        stretch=stretch, bands=bands, box=box, model_transform=model_view.transform,
        display_shape=display.image.shape[:2], notices=notices,
    )


class ImageStore:
    """The images of this server process; thread-safe; removes its folder on :meth:`close`."""

    def __init__(self, parent: Path | None, max_images: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="segearth-serve-", dir=parent))
        self.max_images = max_images
        self._records: dict[str, ImageRecord] = {}
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self) -> tuple[str, Path]:
        """A fresh id and its empty folder; raises OverflowError when the store is full."""
        with self._lock:
            if len(self._records) + len(self._reserved) >= self.max_images:
                raise OverflowError(f"the server already holds {self.max_images} images; delete some first")
            image_id = secrets.token_hex(8)
            self._reserved.add(image_id)
        folder = self.root / image_id
        folder.mkdir()
        return image_id, folder

    def release(self, image_id: str) -> None:
        """Give up a reservation whose upload failed, removing its files."""
        with self._lock:
            self._reserved.discard(image_id)
        shutil.rmtree(self.root / image_id, ignore_errors=True)

    def add(self, record: ImageRecord) -> None:
        with self._lock:
            self._reserved.discard(record.id)
            self._records[record.id] = record

    def get(self, image_id: str) -> ImageRecord:
        with self._lock:
            record = self._records.get(image_id)
        if record is None:
            raise UnknownImage(f"no image with id {image_id!r} (it may have been deleted or the server restarted)")
        return record

    def list(self) -> list[ImageRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created)

    def delete(self, image_id: str) -> None:
        with self._lock:
            record = self._records.pop(image_id, None)
        if record is None:
            raise UnknownImage(f"no image with id {image_id!r}")
        record.deleted = True
        shutil.rmtree(record.folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
