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
    present: bool = True  # False: "not here" (below the presence threshold), every mask empty
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
        self._reserved: dict[str, int] = {}  # image id -> bytes its upload may write (held until add/release)
        self._lock = threading.Lock()

    def reserve(self, upload_bytes: int | None = None, cap: int = 0) -> tuple[str, Path, int]:
        """A fresh id, its empty folder and the bytes its upload may write, reserved against the disk budget.

        ``upload_bytes`` is the declared size (None: unknown, a chunked body: up to ``cap``, or what is left).
        Checking and reserving happen under one lock, so two concurrent uploads cannot both pass the check:
        raises StoreFull (images) or DiskFull (bytes) instead.
        """
        with self._lock:
            if len(self._records) + len(self._reserved) >= self.max_images:
                raise StoreFull(f"the server already holds {self.max_images} images; delete some first")
            left = self.max_disk_bytes - self._usage()
            if left <= 0:
                raise self._full()
            if upload_bytes is not None and upload_bytes > left:
                raise DiskFull(f"the upload does not fit in the {left / 2**20:.4g} MB left of the server's work "
                               "folder; delete some images first")
            granted = min(cap, left) if upload_bytes is None else upload_bytes
            image_id = secrets.token_hex(8)
            self._reserved[image_id] = granted
        folder = self.root / image_id
        folder.mkdir()
        return image_id, folder, granted

    def release(self, image_id: str) -> None:
        """Give up a reservation whose upload failed, removing its files."""
        shutil.rmtree(self.root / image_id, ignore_errors=True)
        with self._lock:
            self._reserved.pop(image_id, None)

    def add(self, record: ImageRecord) -> None:
        """Keep a prepared upload; DiskFull if its files (upload, previews, model input) overshoot the budget."""
        with self._lock:
            self._reserved.pop(record.id, None)  # its files now count as they are
            if self._usage() > self.max_disk_bytes:
                raise DiskFull("the image and its previews do not fit in what is left of the server's work "
                               "folder; delete some images first")
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
        """Bytes of the work folder, counting an upload in progress as at least its reservation."""
        with self._lock:
            return self._usage()

    def _usage(self) -> int:  # under self._lock
        total = 0
        for entry in _entries(self.root):
            size = _size(entry)
            total += max(size, self._reserved.get(entry.name, 0)) if entry.is_dir(follow_symlinks=False) else size
        return total

    def _full(self) -> DiskFull:
        return DiskFull(f"the server's work folder is at its limit of {self.max_disk_bytes / 2**20:.4g} MB; "
                        "delete some images first")

    def disk_left(self) -> int:
        """Bytes the work folder may still grow; raises DiskFull when none."""
        left = self.max_disk_bytes - self.disk_used()
        if left <= 0:
            raise self._full()
        return left

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self._lock_fd)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except OSError:  # removed meanwhile (a deleted image)
        return []


def _size(entry: os.DirEntry) -> int:
    """Bytes of a file, or of every file under a folder (walked: renders and uploads in progress count)."""
    try:
        if not entry.is_dir(follow_symlinks=False):
            return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
    total, folders = 0, [entry.path]
    while folders:
        for child in _entries(Path(folders.pop())):
            try:
                if child.is_dir(follow_symlinks=False):
                    folders.append(child.path)
                else:
                    total += child.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total
