"""Raster reading for the dataset readers, matching the official ``cv2.imread`` arrays without OpenCV.

The official loaders read images as 8-bit 3-channel colour and labels as 8-bit grey. Two backends:

* JPEG, PNG and other non-TIFF files go through Pillow: it decodes JPEG with libjpeg-turbo's
  defaults like OpenCV, giving bit-identical pixels (GDAL's JPEG driver differs by up to ~20 grey
  levels on the released imagery, which would shift model inputs).
* TIFFs go through rasterio/GDAL, which decodes any band count and bit depth losslessly.

16-bit data is reduced to 8 bits by ``>> 8`` as ``cv2.imread`` does. EXIF orientation tags are
not applied (OpenCV would rotate the image but not its PNG mask). Colour labels are converted to
grey with BT.601 weights; libpng's conversion in OpenCV can differ by 1, which never changes
whether a pixel is zero.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from segearth.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` saying which file is missing and what needs it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected file {path} does not exist")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` or raise ``FileNotFoundError`` naming the missing folder."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected folder {path} does not exist")
    return path


def _tiff_bands(path: Path) -> np.ndarray:
    """All bands of a TIFF as ``[C, H, W]``, palette images expanded to RGBA."""
    # GDAL is imported on first use: listing the datasets (`segearth eval --help`) must not start it.
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain TIFFs carry no georeference
        with rasterio.open(path) as ds:
            bands = ds.read()
            if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
                lut = np.zeros((256, 4), dtype=np.uint8)
                for index, rgba in ds.colormap(1).items():
                    if index < 256:
                        lut[index] = rgba
                bands = np.moveaxis(lut[bands[0].astype(np.intp)], -1, 0)
    return bands


def _pil_bands(path: Path) -> np.ndarray:
    """All channels of a Pillow-readable image as ``[C, H, W]`` (palette expanded, 16-bit kept)."""
    with Image.open(path) as file:
        image: Image.Image = file  # converted below: a plain Image, no longer the file
        if image.mode == "P":
            image = image.convert("RGBA")
        elif image.mode not in ("L", "LA", "RGB", "RGBA", *_SIXTEEN_BIT_MODES):
            image = image.convert("RGB")  # e.g. CMYK or YCbCr JPEGs
        array = np.asarray(image)
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def read_bands(path: Path) -> np.ndarray:
    """Read a raster as ``uint8 [C, H, W]`` without channel conversion (e.g. colour-coded masks)."""
    path = require_file(Path(path), "raster")
    bands = _tiff_bands(path) if path.suffix.lower() in TIFF_SUFFIXES else _pil_bands(path)
    if bands.dtype in (np.uint16, np.int32) and bands.min() >= 0 and bands.max() < 2**16:
        bands = (bands >> 8).astype(np.uint8)  # what cv2.imread does with 16-bit input
    elif bands.dtype != np.uint8:
        raise InputError(f"{path}: unsupported data type {bands.dtype} (expected 8- or 16-bit unsigned)")
    return bands


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` RGB (grey is replicated, alpha dropped)."""
    bands = read_bands(path)
    if bands.shape[0] < 3:
        bands = np.repeat(bands[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(bands[:3], 0, -1))


def read_gray(path: Path) -> np.ndarray:
    """Read a label raster as ``uint8 [H, W]`` (colour files converted with BT.601 luma weights)."""
    bands = read_bands(path)
    if bands.shape[0] < 3:
        return bands[0]
    # OpenCV's fixed-point weights (14-bit) with rounding.
    luma = np.tensordot(np.array([4899, 9617, 1868], np.uint32), bands[:3].astype(np.uint32), axes=1)
    return ((luma + (1 << 13)) >> 14).astype(np.uint8)


def raster_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding pixels."""
    path = require_file(Path(path), "raster")
    if path.suffix.lower() in TIFF_SUFFIXES:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return ds.height, ds.width
    with Image.open(path) as image:
        return image.height, image.width
