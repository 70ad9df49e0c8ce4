"""Raster reading for the dataset readers (rasterio/GDAL, no OpenCV).

The official loaders read everything with ``cv2.imread`` as 8-bit: 3-channel colour for images,
single-channel for labels. These helpers give the same arrays for the formats the datasets use
(8-bit JPEG/PNG/TIFF, palette PNGs, grey or RGBA files, 16-bit TIFFs). Known differences: EXIF
orientation tags are not applied, and JPEG decoders may differ by ±1 grey level.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

# OpenCV's fixed-point RGB→grey weights (ITU-R BT.601, 14-bit), so "non-zero" agrees with cv2.
_LUMA_WEIGHTS = np.array([4899, 9617, 1868], dtype=np.uint32)
_LUMA_SHIFT = 14


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` that says which file is missing and why it is needed."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected file {path} does not exist")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` naming the missing folder."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected folder {path} does not exist")
    return path


def _read_bands(path: Path) -> np.ndarray:
    """All bands as ``[C, H, W]`` uint8, palette images expanded to RGB(A)."""
    require_file(Path(path), "raster")
    with warnings.catch_warnings():
        # Plain JPEG/PNG files carry no georeference; that is expected here.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            bands = ds.read()
            if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
                cmap = ds.colormap(1)
                lut = np.zeros((256, 4), dtype=np.uint8)
                for index, rgba in cmap.items():
                    if index < 256:
                        lut[index] = rgba
                bands = np.moveaxis(lut[bands[0].astype(np.intp)], -1, 0)
    if bands.dtype == np.uint16:
        bands = (bands >> 8).astype(np.uint8)  # what cv2.imread does with 16-bit input
    elif bands.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported data type {bands.dtype} (expected 8- or 16-bit unsigned)")
    return bands


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` RGB (grey is replicated, alpha dropped)."""
    bands = _read_bands(path)
    if bands.shape[0] < 3:
        bands = np.repeat(bands[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(bands[:3], 0, -1))


def read_gray(path: Path) -> np.ndarray:
    """Read a label raster as ``uint8 [H, W]`` (colour files converted with OpenCV's luma weights)."""
    bands = _read_bands(path)
    if bands.shape[0] < 3:
        return bands[0]
    rgb = bands[:3].astype(np.uint32)
    luma = np.tensordot(_LUMA_WEIGHTS, rgb, axes=1) + (1 << (_LUMA_SHIFT - 1))
    return (luma >> _LUMA_SHIFT).astype(np.uint8)


def read_bands(path: Path) -> np.ndarray:
    """Read a raster as ``uint8 [C, H, W]`` without any channel conversion (colour-coded masks)."""
    return _read_bands(path)


def raster_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding pixels."""
    require_file(Path(path), "raster")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.height, ds.width
