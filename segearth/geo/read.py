"""Reading user rasters into the 8-bit RGB images the model expects.

Any GDAL-readable file works: GeoTIFFs of any size, band count, integer or float dtype and
CRS, and plain JPEG/PNG (no CRS: outputs then use pixel coordinates). The steps are

1. :func:`select_bands` picks three 1-based bands for R, G, B (single- and two-band
   rasters are shown as grey by repeating band 1);
2. :func:`compute_stretch` derives a per-band percentile stretch *once per raster* from a
   small decimated read, ignoring nodata / masked / non-finite pixels;
3. :func:`read_overview` (whole scene, decimated with ``out_shape``) or :func:`read_window`
   (one full-resolution tile) apply that same stretch, so tiles look alike.

Every problem with the user's file surfaces as :class:`RasterInputError` naming the file.

Sources are local paths or anything GDAL opens itself, passed to rasterio untouched:
``https://`` / ``http://`` URLs, ``s3://``, ``zip://``, ``/vsicurl/...``, ``/vsizip/...``.
Reads of a remote Cloud Optimized GeoTIFF fetch only the byte ranges they need (the header,
the overview or the tiles of a window). Recommended GDAL settings for remote rasters, set
in the environment or with ``rasterio.Env``: ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` (no
listing of the remote folder on open) and ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS=.tif,.tiff``
(no probing for side files); credentials come from GDAL's usual variables (``AWS_*``,
``GDAL_HTTP_HEADERS``...).

:func:`open_raster` refuses rasters above ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`) from
the header alone, before anything slow happens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from segearth.errors import InputError
from segearth.geo.letterbox import Letterbox, fit_long_side, letterbox  # re-exported: preprocessing API
from segearth.geo.paths import as_source, describe_source, is_remote, source_name
from segearth.options import DEFAULT_MAX_PIXELS  # defined with the CLI's options, which must import fast

__all__ = [
    "DEFAULT_MAX_PIXELS", "Letterbox", "RasterInfo", "RasterInputError", "SceneImage", "Stretch",
    "compute_stretch", "is_remote", "letterbox", "open_raster", "read_overview", "read_valid_mask",
    "read_window", "select_bands", "source_name",
]

STATS_SIZE = 1024  # long side of the decimated read used for the stretch statistics


class RasterInputError(InputError):
    """The user's raster cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RasterInfo:
    """What we need to know about an input raster, read from its header only.

    ``path`` is a ``Path`` for a local file and the original string for a remote source
    (URL or ``/vsi`` path, where ``Path`` would mangle ``//``); use ``name`` in messages.
    """

    path: Path | str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: CRS | None
    transform: Affine
    nodata: float | None
    bounds: BoundingBox
    has_georeference: bool

    @property
    def name(self) -> str:
        """The file-name part of the source (``x.tif`` of ``/data/x.tif`` or ``https://h/x.tif``)."""
        return source_name(self.path)

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class Stretch:
    """How raw band values become uint8: per-band ``[low, high] → [0, 255]``, or passthrough."""

    bands: tuple[int, int, int]
    low: tuple[float, float, float] | None  # None: values are clipped to 0..255, not stretched
    high: tuple[float, float, float] | None
    notices: tuple[str, ...] = ()

    def to_uint8(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Map ``(3, h, w)`` raw values to an ``(h, w, 3)`` uint8 image; invalid pixels become 0."""
        if self.low is None or self.high is None:
            out = np.clip(data, 0, 255)
        else:
            low = np.asarray(self.low, dtype=np.float64)[:, None, None]
            # A constant band has high == low; widening by one avoids 0/0 and maps it to black.
            span = np.maximum(np.asarray(self.high, dtype=np.float64)[:, None, None] - low, 1e-12)
            out = np.clip((data.astype(np.float64) - low) / span * 255.0, 0, 255)
        out = np.where(valid[None] & np.isfinite(out), np.rint(out), 0)
        return np.moveaxis(out.astype(np.uint8), 0, -1)


@dataclass
class SceneImage:
    """An RGB uint8 image of (part of) a raster plus what is needed to map results back."""

    image: np.ndarray  # (h, w, 3) uint8 RGB
    valid: np.ndarray  # (h, w) bool: True where every selected band holds data
    window: Window  # the full-resolution pixels this image covers
    transform: Affine  # georeferencing of *this image's* pixel grid
    info: RasterInfo
    stretch: Stretch
    notices: list[str] = field(default_factory=list)


@contextmanager
def _dataset(source: str | Path) -> Iterator[DatasetReader]:
    """Open ``source`` and turn every GDAL/rasterio failure into a :class:`RasterInputError`."""
    src = as_source(source)
    where = describe_source(src)
    if isinstance(src, Path):
        if not src.exists():
            raise RasterInputError(f"{where}: file not found")
        if src.is_dir():
            raise RasterInputError(f"{where}: is a directory, not a raster file")
        if src.stat().st_size == 0:
            raise RasterInputError(f"{where}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # JPEG/PNG: reported as a notice
            dataset = rasterio.open(src)
    except RasterioError as exc:
        what = "cannot open the remote raster" if is_remote(src) else "not a readable raster"
        raise RasterInputError(f"{where}: {what} ({_gdal_message(exc)})") from None
    try:
        with dataset:
            yield dataset
    except RasterioError as exc:
        what = ("the transfer failed or the data is corrupt" if is_remote(src)
                else "the file looks truncated or corrupt")
        raise RasterInputError(f"{where}: reading pixels failed, {what} ({_gdal_message(exc)})") from None


def _gdal_message(exc: BaseException) -> str:
    # rasterio often raises "Read failed. See previous exception" with GDAL's reason as the cause.
    cause = exc.__cause__ or exc.__context__
    return f"{exc}: {cause}" if cause is not None and str(cause) not in str(exc) else str(exc)


def _info(ds: DatasetReader, path: Path | str) -> RasterInfo:
    if ds.width == 0 or ds.height == 0 or ds.count == 0:
        raise RasterInputError(
            f"{describe_source(path)}: zero-size raster ({ds.width}x{ds.height}, {ds.count} bands)"
        )
    georeferenced = ds.crs is not None or not ds.transform.is_identity
    return RasterInfo(
        path=path, width=ds.width, height=ds.height, count=ds.count, dtypes=tuple(ds.dtypes),
        crs=ds.crs, transform=ds.transform, nodata=ds.nodata, bounds=ds.bounds,
        has_georeference=georeferenced,
    )


def open_raster(source: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> RasterInfo:
    """Read a raster's header; raises :class:`RasterInputError` for missing/unreadable/empty files.

    A raster of more than ``max_pixels`` pixels (width × height; ``None``: no limit) is
    refused from its header alone, with the limit to raise in the message.
    """
    src = as_source(source)
    with _dataset(src) as ds:
        info = _info(ds, src)
    if max_pixels is not None and info.pixels > max_pixels:
        raise RasterInputError(
            f"{describe_source(src)}: {info.width}x{info.height} pixels ({info.pixels / 1e9:.3g} gigapixels) is "
            f"above the limit of {max_pixels:,} pixels; raise it with --max-pixels {info.pixels} (max_pixels=)"
        )
    return info


def select_bands(info: RasterInfo, bands: Sequence[int] | None = None) -> tuple[tuple[int, int, int], list[str]]:
    """Choose the 1-based bands shown as R, G, B and explain the choice in notices.

    ``bands`` may list 3 bands (e.g. ``[4, 3, 2]``) or 1 band (shown as grey). By default
    the first three bands are used; 1- and 2-band rasters show band 1 as grey.
    Complex (SAR) bands are refused: they are not optical imagery.
    """
    notices: list[str] = []
    where = describe_source(info.path)
    if bands is None:
        if info.count >= 3:
            chosen = (1, 2, 3)
            if info.count > 3:
                notices.append(f"{info.name}: {info.count} bands, using bands 1,2,3 as RGB (choose with bands=)")
        else:
            chosen = (1, 1, 1)
            extra = " (band 2 ignored)" if info.count == 2 else ""
            notices.append(f"{info.name}: {info.count}-band raster, band 1 replicated to grey RGB{extra}")
    else:
        requested = [int(b) for b in bands]
        bad = [b for b in requested if not 1 <= b <= info.count]
        if bad:
            raise RasterInputError(f"{where}: unknown band index {bad} (the raster has bands 1..{info.count})")
        if len(requested) == 1:
            chosen = (requested[0],) * 3
            notices.append(f"{info.name}: band {requested[0]} replicated to grey RGB")
        elif len(requested) == 3:
            chosen = (requested[0], requested[1], requested[2])
        else:
            raise RasterInputError(f"{where}: give 1 or 3 bands, got {requested}")
    for band in sorted(set(chosen)):
        if np.dtype(info.dtypes[band - 1]).kind == "c":
            raise RasterInputError(
                f"{where}: band {band} is {info.dtypes[band - 1]} (complex SAR data), not optical imagery; "
                "convert it to amplitude or intensity (e.g. dB) first"
            )
    return chosen, notices


def _read(
    ds: DatasetReader, bands: tuple[int, int, int], window: Window | None, out_shape: tuple[int, int] | None,
    resampling: Resampling,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(3, h, w)`` raw values, a joint validity mask, and per-band validity.

    Each distinct band is read once. A pixel is invalid when masked by an internal/alpha
    mask in any selected band, when non-finite, or — for nodata-value masks — when *every*
    selected band holds the nodata value: a single saturated channel (e.g. red = 255 in an
    image whose nodata is 255) is real data, and dropping it punched holes in bright roofs.
    """
    unique = sorted(set(bands))
    shape = None if out_shape is None else (len(unique), *out_shape)
    data = ds.read(unique, window=window, out_shape=shape, resampling=resampling)
    masks = ds.read_masks(unique, window=window, out_shape=shape, resampling=Resampling.nearest) > 0
    valid = _joint_validity(ds, unique, masks) & np.isfinite(data).all(axis=0)
    pick = [unique.index(b) for b in bands]
    return data[pick], valid, masks[pick] & valid


def _joint_validity(ds: DatasetReader, bands: list[int], masks: np.ndarray) -> np.ndarray:
    """Combine per-band GDAL masks: nodata-value masks with *any*, real masks with *all*."""
    nodata_only = all(ds.mask_flag_enums[b - 1] == [MaskFlags.nodata] for b in bands)
    # numpy's stubs type any/all with an axis as "bool_ | ndarray"; an axis of a 3-D array gives an array.
    return masks.any(axis=0) if nodata_only else masks.all(axis=0)  # type: ignore[return-value]


def compute_stretch(
    path: str | Path,
    bands: Sequence[int] | None = None,
    *,
    stretch: bool | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> Stretch:
    """Compute the raster's uint8 conversion once, from a read decimated to ≤ 1024 px.

    ``stretch=None`` (default) stretches unless every selected band is already uint8, which
    is passed through unchanged; ``True`` forces the percentile stretch, ``False`` only clips
    values to 0..255. Percentiles are per band over valid pixels (nodata, dataset masks and
    NaN/inf excluded). Raises :class:`RasterInputError` when no valid pixel is found.
    """
    path = as_source(path)
    with _dataset(path) as ds:
        info = _info(ds, path)
        chosen, notices = select_bands(info, bands)
        out_shape = fit_long_side(info.height, info.width, STATS_SIZE)
        if max(info.height, info.width) <= STATS_SIZE:
            out_shape = (info.height, info.width)
        # Nearest keeps the statistics on real pixel values, never blends data with nodata.
        data, valid, band_valid = _read(ds, chosen, None, out_shape, Resampling.nearest)
    if not valid.any():
        raise RasterInputError(
            f"{describe_source(path)}: raster holds no valid data (every pixel is nodata or masked)"
        )
    is_uint8 = all(info.dtypes[b - 1] == "uint8" for b in chosen)
    if stretch is False or (stretch is None and is_uint8):
        return Stretch(chosen, None, None, tuple(notices))
    lows, highs = [], []
    for i in range(3):
        values = data[i][band_valid[i]]
        low, high = np.percentile(values, percentiles) if values.size else (0.0, 0.0)
        lows.append(float(low))
        highs.append(float(high))
    notices.append(
        f"{source_name(path)}: {'/'.join(sorted(set(info.dtypes[b - 1] for b in chosen)))} values stretched to 8-bit "
        f"with the {percentiles[0]:g}-{percentiles[1]:g}% percentiles of each band"
    )
    return Stretch(chosen, (lows[0], lows[1], lows[2]), (highs[0], highs[1], highs[2]), tuple(notices))


def _georef_notice(info: RasterInfo) -> list[str]:
    if info.has_georeference:
        return []
    return [f"{info.name}: no georeferencing (no CRS/transform); outputs use pixel coordinates"]


def read_overview(
    path: str | Path,
    size: int,
    bands: Sequence[int] | None = None,
    *,
    stretch: bool | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    params: Stretch | None = None,
    resampling: Resampling = Resampling.bilinear,
) -> SceneImage:
    """Read the whole raster as an RGB image whose long side is at most ``size``.

    Larger rasters are decimated by GDAL (``out_shape``; internal overviews are used when
    present), so the full-resolution array is never materialised. The overview's shape uses
    the letterbox truncation rule, so letterboxing it to ``size`` needs no further resize.
    Smaller rasters are read at native resolution (letterboxing upsamples them).
    ``params`` reuses a :class:`Stretch` from :func:`compute_stretch`; otherwise it is
    computed here from ``bands``/``stretch``/``percentiles``.
    """
    path = as_source(path)
    params = params or compute_stretch(path, bands, stretch=stretch, percentiles=percentiles)
    with _dataset(path) as ds:
        info = _info(ds, path)
        out_h, out_w = (info.height, info.width)
        if max(out_h, out_w) > size:
            out_h, out_w = fit_long_side(info.height, info.width, size)
        data, valid, _ = _read(ds, params.bands, None, (out_h, out_w), resampling)
    transform = info.transform @ Affine.scale(info.width / out_w, info.height / out_h)
    return SceneImage(
        image=params.to_uint8(data, valid), valid=valid, window=Window(0, 0, info.width, info.height),
        transform=transform, info=info, stretch=params, notices=[*params.notices, *_georef_notice(info)],
    )


def read_window(
    path: str | Path,
    window: Window,
    params: Stretch,
) -> SceneImage:
    """Read one full-resolution window with the raster-wide stretch ``params``.

    Using the statistics of the whole raster (not of the tile) keeps brightness consistent
    across tiles, so neighbouring predictions agree in overlaps.
    """
    path = as_source(path)
    with _dataset(path) as ds:
        info = _info(ds, path)
        _check_window(info, window)
        data, valid, _ = _read(ds, params.bands, window, None, Resampling.nearest)
        transform = ds.window_transform(window)
    return SceneImage(
        image=params.to_uint8(data, valid), valid=valid, window=window, transform=transform,
        info=info, stretch=params, notices=[*params.notices, *_georef_notice(info)],
    )


def read_valid_mask(path: str | Path, window: Window | None = None, bands: Sequence[int] | None = None) -> np.ndarray:
    """Full-resolution validity of ``window`` (whole raster if None), for forcing nodata out of masks."""
    path = as_source(path)
    with _dataset(path) as ds:
        info = _info(ds, path)
        chosen, _ = select_bands(info, bands)
        if window is not None:
            _check_window(info, window)
        unique = sorted(set(chosen))
        valid = _joint_validity(ds, unique, ds.read_masks(unique, window=window) > 0)
        if any(np.dtype(info.dtypes[b - 1]).kind == "f" for b in unique):
            valid &= np.isfinite(ds.read(unique, window=window)).all(axis=0)
    return valid


def _check_window(info: RasterInfo, window: Window) -> None:
    w = window.round_offsets().round_lengths()
    if w.col_off < 0 or w.row_off < 0 or w.col_off + w.width > info.width or w.row_off + w.height > info.height:
        where = describe_source(info.path)
        raise RasterInputError(f"{where}: window {window} lies outside the {info.width}x{info.height} raster")
