"""Turning per-image predictions into a full-resolution result without holding the raster.

Two strategies exist for rasters larger than the model input:

* **scene**: predict once on a decimated overview (:func:`segearth.geo.read.read_overview`)
  and bring the low-resolution logits to full resolution block by block with
  :func:`upsample_blocks` — fast, sees the whole scene, coarse edges;
* **tiles**: predict on full-resolution windows from :func:`plan_tiles` and blend their
  logits with :class:`LogitStitcher` — sharp edges, but each tile sees only its context.

Both hand the writer ``(Window, block)`` pairs, so peak memory is set by the block or tile
size, never by the raster size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from segearth.errors import InputError


def _offsets(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile, stride))
    # The last tile is shifted inward to end on the raster edge, so every tile is full size
    # (the model sees no padding) at the cost of a larger overlap there.
    offsets.append(length - tile)
    return offsets


def plan_tiles(width: int, height: int, tile_size: int, overlap: int = 0) -> list[Window]:
    """Windows of ``tile_size²`` pixels, overlapping by ``overlap``, covering the whole raster.

    Rows and columns are spaced ``tile_size - overlap`` apart; the last row/column is moved
    inward to end at the edge. On an axis shorter than ``tile_size`` a single tile spans the
    whole axis (and is smaller than ``tile_size``).
    """
    if tile_size <= 0:
        raise InputError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise InputError(f"overlap must be in [0, tile_size), got {overlap} for tile_size {tile_size}")
    stride = tile_size - overlap
    tile_w, tile_h = min(tile_size, width), min(tile_size, height)
    return [
        Window(col, row, tile_w, tile_h)
        for row in _offsets(height, tile_size, stride)
        for col in _offsets(width, tile_size, stride)
    ]


def iter_blocks(width: int, height: int, block: int = 1024) -> Iterator[Window]:
    """Non-overlapping windows of at most ``block × block`` pixels, row by row."""
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def ramp_weight(height: int, width: int, ramp: int) -> np.ndarray:
    """Separable blend weight: rises linearly over ``ramp`` pixels from each edge, 1 inside.

    The weight is strictly positive (the edge pixel gets ``0.5 / ramp``), so a pixel covered
    by a single tile — e.g. on the raster border — still gets that tile's value exactly.
    """
    def axis(n: int) -> np.ndarray:
        if ramp <= 0:
            return np.ones(n, dtype=np.float32)
        i = np.arange(n, dtype=np.float32) + 0.5
        return np.clip(np.minimum(i, n - i) / ramp, None, 1.0)

    return axis(height)[:, None] * axis(width)[None, :]


class _DiskGrid:
    """A float32 ``(height, width)`` array in a file, read and written window by window.

    Plain ``pread``/``pwrite`` rather than a memory map on purpose: written pages of a map stay
    resident in the process (and in its RSS) until the OS needs the memory, so a mapped accumulator
    for a 20 000² raster showed gigabytes of RSS. Written through the page cache, they do not.
    """

    def __init__(self, path: Path, height: int, width: int) -> None:
        self.width = width
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, height * width * 4)  # a sparse file of zeros

    def read(self, row: int, col: int, h: int, w: int) -> np.ndarray:
        out = np.empty((h, w), np.float32)
        for i in range(h):
            out[i] = np.frombuffer(os.pread(self._fd, w * 4, ((row + i) * self.width + col) * 4), np.float32)
        return out

    def write(self, row: int, col: int, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        for i in range(values.shape[0]):
            os.pwrite(self._fd, values[i].tobytes(), ((row + i) * self.width + col) * 4)

    def close(self) -> None:
        os.close(self._fd)


class LogitStitcher:
    """Blend overlapping per-tile logits (or probabilities) into one full-resolution map.

    Weighted sums and weights live in two float32 files in a temporary directory, read and
    written one window at a time, so memory use follows the tile size, not the raster size.
    Use as a context manager (or call :meth:`close`) to delete the files.

    >>> with LogitStitcher(width, height, ramp=overlap) as stitcher:  # doctest: +SKIP
    ...     for window in plan_tiles(width, height, 1024, overlap):
    ...         stitcher.add(window, predict(window))
    ...     write_mask_geotiff(path, ((w, b > 0) for w, b in stitcher.blocks()), info)
    """

    def __init__(self, width: int, height: int, ramp: int = 0, workdir: str | Path | None = None) -> None:
        self.width, self.height, self.ramp = width, height, ramp
        self._tmp = tempfile.TemporaryDirectory(prefix="segearth-stitch-", dir=workdir)
        self._sum = _DiskGrid(Path(self._tmp.name) / "sum.f32", height, width)
        self._weight = _DiskGrid(Path(self._tmp.name) / "weight.f32", height, width)

    def add(self, window: Window, values: np.ndarray) -> None:
        """Accumulate one tile's ``(h, w)`` float map at its window."""
        row, col = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if values.shape != (h, w):
            raise ValueError(f"values of shape {values.shape} do not match window {h}x{w}")
        if row < 0 or col < 0 or row + h > self.height or col + w > self.width:
            raise ValueError(f"window {window} lies outside the {self.width}x{self.height} output")
        weight = ramp_weight(h, w, self.ramp)
        self._sum.write(row, col, self._sum.read(row, col, h, w) + values.astype(np.float32) * weight)
        self._weight.write(row, col, self._weight.read(row, col, h, w) + weight)

    def blocks(self, block: int = 1024, fill: float = np.nan) -> Iterator[tuple[Window, np.ndarray]]:
        """Yield ``(window, blended values)`` blocks; pixels no tile covered get ``fill``."""
        for window in iter_blocks(self.width, self.height, block):
            at = (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
            weight = self._weight.read(*at)
            with np.errstate(invalid="ignore", divide="ignore"):
                out = self._sum.read(*at) / weight
            yield window, np.where(weight > 0, out, np.float32(fill)).astype(np.float32)

    def close(self) -> None:
        """Close and delete the accumulator files."""
        self._sum.close()
        self._weight.close()
        self._tmp.cleanup()

    def __enter__(self) -> LogitStitcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _source_index(
    out_start: int, out_len: int, in_len: int, out_total: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices/weights along one axis, as ``F.interpolate(align_corners=False)``."""
    scale = in_len / out_total
    src = (np.arange(out_start, out_start + out_len, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)  # torch clamps negative coordinates to the first pixel
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, (src - i0).astype(np.float32)


def upsample_blocks(
    lowres: np.ndarray, width: int, height: int, block: int = 1024
) -> Iterator[tuple[Window, np.ndarray]]:
    """Bilinearly upsample a ``(h, w)`` float map to ``height × width``, one block at a time.

    Each block equals the matching crop of ``F.interpolate(lowres, (height, width),
    mode="bilinear", align_corners=False)`` but only the block is ever allocated. This is
    how *scene* mode turns the overview's logits into a full-resolution mask.
    """
    if lowres.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {lowres.shape}")
    src = np.asarray(lowres, dtype=np.float32)
    in_h, in_w = src.shape
    for window in iter_blocks(width, height, block):
        y0, y1, wy = _source_index(window.row_off, window.height, in_h, height)
        x0, x1, wx = _source_index(window.col_off, window.width, in_w, width)
        top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
        bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
        yield window, top * (1 - wy[:, None]) + bottom * wy[:, None]
