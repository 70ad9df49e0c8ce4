"""Uploaded rasters and their answers, in a temporary folder removed on shutdown.

Layout (every name chosen by the server, never by the client)::

    <tmp>/segearth-serve-XXXX/server.lock                     flock held while the server runs; holds its pid
    <tmp>/segearth-serve-XXXX/<image id>/raster.tif|png|jpg   the upload
                                        display.png            RGB preview (long side <= display_max)
                                        map.png                RGBA preview on a Web Mercator grid (see mapview)
                                        valid.npy              nodata mask on the preview grid
                                        canvas.npy             letterboxed model input, the CLI's (cache misses)
                                        answers/<n>/logits.npy decoder logits on the model canvas (S/4 square)
                                        answers/<n>/*          rendered files, see render.FILES

A server killed with SIGKILL (or a crashed machine) cannot remove its folder; the next server started
with the same parent removes such stale folders: those with the prefix *and* a ``server.lock`` that
nobody holds (the kernel drops a flock when its process dies, so a reused pid cannot fool the check).
Folders without the lock file were not made by this code and are left alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..geo.letterbox import Letterbox
from ..geo.read import RasterInfo, Stretch
from .limits import DiskFull, StoreFull
from .mapview import MapView

PREFIX = "segearth-serve-"
LOCK_NAME = "server.lock"
log = logging.getLogger("segearth.serve")


def remove_stale_folders(parent: Path) -> list[Path]:
    """Remove the work folders of servers that died without cleaning up (see the module docstring)."""
    removed = []
    for folder in sorted(parent.glob(PREFIX + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:  # no lock file (not ours), or another user's folder
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a running server holds it
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        log.info("removed the work folder of a server that is no longer running: %s", folder)
        removed.append(folder)
    return removed


def _lock_folder(folder: Path) -> int:
    """Hold an exclusive flock on ``folder/server.lock`` for the life of this process (the fd)."""
    # Locked under a temporary name, then renamed: a concurrent cleanup never sees it unlocked.
    tmp = folder / f".{LOCK_NAME}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.replace(tmp, folder / LOCK_NAME)
    return fd


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
    failed: dict[str, str] = field(default_factory=dict)  # format -> why its render failed (never retried)
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
    box: Letterbox  # where the scene input (pipeline.read_scene) sits on the model canvas
    display_shape: tuple[int, int]  # (h, w) of display.png, the grid of the PNG masks
    notices: list[str]
    map_view: MapView | None  # placement of map.png on the page's map
    created: float = field(default_factory=time.time)
    answers: list[Answer] = field(default_factory=list)  # the newest ``max_answers``, oldest first
    next_answer: int = 1
    deleted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answer(self, number: int) -> Answer:
        with self.lock:
            answers = list(self.answers)
        for a in answers:
            if a.number == number:
                return a
        if answers and 0 < number < answers[0].number:
            raise UnknownImage(f"answer {number} of image {self.id} was dropped: the server keeps the "
                               f"{len(answers)} newest answers per image")
        raise UnknownImage(f"image {self.id} has no answer {number}")

    def add_answer(self, answer: Answer, keep: int) -> None:
        """Append ``answer`` and drop the oldest beyond ``keep`` (their files too)."""
        with self.lock:
            self.answers.append(answer)
            dropped = self.answers[:-keep]
            del self.answers[:-keep]
        for old in dropped:
            with old.lock:  # a render of it in progress finishes first
                shutil.rmtree(old.folder, ignore_errors=True)


class ImageStore:
    """The images of this server process; thread-safe; removes its folder on :meth:`close`."""

    def __init__(self, parent: Path | None, max_images: int, max_disk_bytes: int) -> None:
        parent = Path(parent or tempfile.gettempdir()).resolve()  # absolute: children get paths inside it
        remove_stale_folders(parent)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        self._lock_fd = _lock_folder(self.root)
        self.max_images = max_images
        self.max_disk_bytes = max_disk_bytes
        self._records: dict[str, ImageRecord] = {}
        self._reserved: set[str] = set()
        self._lock = threading.Lock()

    def reserve(self) -> tuple[str, Path]:
        """A fresh id and its empty folder; raises StoreFull when the store is full."""
        with self._lock:
            if len(self._records) + len(self._reserved) >= self.max_images:
                raise StoreFull(f"the server already holds {self.max_images} images; delete some first")
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

    def disk_used(self) -> int:
        """Bytes of every file under the work folder (walked: renders and uploads in progress count)."""
        total, folders = 0, [self.root]
        while folders:
            try:
                entries = list(os.scandir(folders.pop()))
            except OSError:  # removed meanwhile (a deleted image)
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
        return total

    def disk_left(self) -> int:
        """Bytes the work folder may still grow; raises DiskFull when none."""
        left = self.max_disk_bytes - self.disk_used()
        if left <= 0:
            raise DiskFull(f"the server's work folder is at its limit of {self.max_disk_bytes / 2**20:.4g} MB; "
                           "delete some images first")
        return left

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self._lock_fd)
