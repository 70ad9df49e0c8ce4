"""Mask → polygons, and polygon files (GeoJSON in WGS84, GeoPackage in the raster's CRS).

Coordinate choices:

* polygons are built in the raster's CRS (pixel edges mapped through its transform), so
  they overlay the input exactly; rasters without georeferencing give pixel coordinates
  (x = column, y = row, origin at the top-left corner);
* **GeoJSON** follows RFC 7946: coordinates are reprojected to WGS84 longitude/latitude
  and no ``crs`` member is written. Without georeferencing the pixel coordinates are
  written as they are and a ``segearth:coordinates`` foreign member says so;
* **GeoPackage** keeps the raster's native CRS (no resampling of vertices, exact areas),
  in a layer named after the question (:func:`layer_name`).

GeoJSON coordinates are rounded to what the data can mean: 7 decimals of a degree (about
1 cm) for longitude/latitude, 3 decimals for pixel coordinates.

Each feature carries the caller's properties (e.g. question, model), ``area_m2`` for
georeferenced rasters (computed in a Lambert azimuthal equal-area projection centred on
the mask, so it is right for geographic and Web Mercator CRSs too, where CRS units² would
be degree² or distorted m²) or ``area_px`` (pixels) without a CRS, and ``mean_probability``
when probabilities are given. Both writers are atomic (:func:`segearth.geo.paths.atomic_path`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from segearth.geo.paths import ascii_slug, atomic_path

WGS84 = CRS.from_epsg(4326)
LAYER = "segearth"
LAYER_MAX_LEN = 60
LONLAT_DECIMALS = 7  # 1e-7 degree is about 1.1 cm on the ground
PIXEL_DECIMALS = 3


@dataclass(frozen=True)
class MaskPolygon:
    """One connected region of the mask, in the raster's CRS."""

    geometry: shapely.Polygon
    properties: dict[str, Any] = field(default_factory=dict)


def _equal_area_crs(crs: CRS, bounds: tuple[float, float, float, float]) -> CRS:
    """A local equal-area CRS centred on ``bounds`` (given in ``crs``)."""
    cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    lon_lat = transform_geom(crs, WGS84, {"type": "Point", "coordinates": (cx, cy)})["coordinates"]
    return CRS.from_proj4(f"+proj=laea +lat_0={lon_lat[1]} +lon_0={lon_lat[0]} +datum=WGS84 +units=m +no_defs")


def _areas_m2(geoms: Sequence[shapely.Geometry], crs: CRS) -> np.ndarray:
    local = _equal_area_crs(crs, shapely.total_bounds(geoms))
    return np.array([shape(g).area for g in transform_geom(crs, local, [mapping(g) for g in geoms])])


def default_min_area(
    transform: Affine, crs: CRS | None, cell_px: float, raster_shape: tuple[int, int] | None = None
) -> float:
    """The area of one square cell of ``cell_px`` × ``cell_px`` raster pixels: a ``min_area``.

    In m² (equal-area projection, so right for geographic CRSs) for a georeferenced raster,
    in pixel² without a CRS. The cell is placed at the raster's centre when ``raster_shape``
    ``(height, width)`` is given, else at its top-left corner (on geographic rasters m² per
    pixel shrink towards the poles).
    """
    if crs is None:
        return float(cell_px) ** 2
    rows, cols = raster_shape if raster_shape is not None else (cell_px, cell_px)
    top, left = (rows - cell_px) / 2, (cols - cell_px) / 2
    square = ((0, 0), (cell_px, 0), (cell_px, cell_px), (0, cell_px))
    corners = [transform @ (left + dx, top + dy) for dx, dy in square]
    return float(_areas_m2([shapely.Polygon(corners)], crs)[0])


def layer_name(question: str | None) -> str:
    """A GeoPackage layer name from the question: ``[a-z0-9_]``, at most 60 characters."""
    slug = ascii_slug(question or "", sep="_")[:LAYER_MAX_LEN].rstrip("_")
    if not slug:
        return LAYER
    return slug if slug[0].isalpha() else f"q_{slug}"[:LAYER_MAX_LEN]  # SQL identifiers start with a letter


def mask_to_polygons(
    mask: np.ndarray,
    transform: Affine,
    crs: CRS | None,
    probabilities: np.ndarray | None = None,
    simplify_tolerance: float = 0.0,
    min_area: float = 0.0,
    properties: Mapping[str, Any] | None = None,
) -> list[MaskPolygon]:
    """Vectorise the non-zero pixels of a 2-D mask into polygons (with holes).

    Regions are 4-connected, so every polygon is valid. ``simplify_tolerance`` is in CRS
    units (topology-preserving Douglas-Peucker); ``min_area`` drops regions smaller than
    that many m² (pixel² without a CRS; see :func:`default_min_area`), measured before
    simplification. Each polygon gets ``area_m2`` (``area_px`` without a CRS);
    ``probabilities`` (same shape, float) adds each region's mean probability.
    """
    binary = np.asarray(mask) != 0
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {binary.shape}")
    if probabilities is not None and np.shape(probabilities) != binary.shape:
        raise ValueError(f"probabilities {np.shape(probabilities)} do not match mask {binary.shape}")
    geoms = [shape(g) for g, _ in shapes(binary.astype(np.uint8), mask=binary, connectivity=4, transform=transform)]
    if not geoms:
        return []

    if crs is not None:
        area_key, areas = "area_m2", _areas_m2(geoms, crs)
    else:  # pixel coordinates, or a transform in unknown units: count pixels
        area_key, areas = "area_px", np.array([g.area for g in geoms]) / abs(transform.determinant)
    means = None
    if probabilities is not None:
        # Polygons follow pixel edges, so burning them back with the same transform labels
        # exactly their own pixels; one bincount then gives every region's mean.
        labels = rasterize(((g, i + 1) for i, g in enumerate(geoms)), out_shape=binary.shape,
                           transform=transform, dtype="int32")
        probs = np.asarray(probabilities, dtype=np.float64).ravel()
        sums = np.bincount(labels.ravel(), weights=probs, minlength=len(geoms) + 1)
        counts = np.bincount(labels.ravel(), minlength=len(geoms) + 1)
        means = sums[1:] / np.maximum(counts[1:], 1)

    base = dict(properties or {})
    out: list[MaskPolygon] = []
    for i, geom in enumerate(geoms):
        if areas[i] < min_area:
            continue
        if simplify_tolerance > 0:
            geom = geom.simplify(simplify_tolerance, preserve_topology=True)
        props: dict[str, Any] = {**base, area_key: float(areas[i])}
        if means is not None:
            props["mean_probability"] = float(means[i])
        out.append(MaskPolygon(geom, props))
    return out


def write_geojson(
    path: str | Path, polygons: Sequence[MaskPolygon], crs: CRS | None, overwrite: bool = False
) -> Path:
    """Write an RFC 7946 FeatureCollection (WGS84 lon/lat; pixel coordinates if ``crs`` is None).

    Coordinates are rounded to 7 decimals (lon/lat) or 3 (pixels). Atomic; raises
    ``FileExistsError`` unless ``overwrite`` and :class:`OutputWriteError` on write errors.
    """
    path = Path(path)
    geometries = [mapping(p.geometry) for p in polygons]
    if crs is not None and geometries:
        geometries = transform_geom(crs, WGS84, geometries)
    decimals = LONLAT_DECIMALS if crs is not None else PIXEL_DECIMALS
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": i, "properties": p.properties,
             "geometry": {"type": g["type"], "coordinates": _rounded(g["coordinates"], decimals)}}
            for i, (p, g) in enumerate(zip(polygons, geometries, strict=True))
        ],
    }
    if crs is None:
        collection["segearth:coordinates"] = "pixel (x = column, y = row); the raster has no georeferencing"
    text = json.dumps(collection, allow_nan=False)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text)
    return path


def _rounded(coordinates: Any, decimals: int) -> Any:
    """Nested coordinate sequences as lists of rounded floats (round() keeps the shortest repr)."""
    if isinstance(coordinates, (int, float)):
        return round(float(coordinates), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return [_rounded(c, decimals) for c in coordinates]


def _columns(polygons: Sequence[MaskPolygon]) -> tuple[list[str], list[np.ndarray]]:
    names: list[str] = []
    for polygon in polygons:
        names.extend(k for k in polygon.properties if k not in names)
    arrays = []
    for name in names:
        values = [p.properties.get(name) for p in polygons]
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) or v is None for v in values):
            arrays.append(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
        else:
            arrays.append(np.array([None if v is None else str(v) for v in values], dtype=object))
    return names, arrays


def write_gpkg(
    path: str | Path,
    polygons: Sequence[MaskPolygon],
    crs: CRS | None,
    overwrite: bool = False,
    layer: str | None = None,
    *,
    question: str | None = None,
) -> Path:
    """Write the polygons to a GeoPackage layer in the raster's native CRS (needs ``pyogrio``).

    The layer is ``layer`` if given, else named after ``question`` (:func:`layer_name`),
    else ``segearth``. The file is written whole and atomically (an old file is replaced,
    never appended to).
    """
    try:
        from pyogrio.errors import DataLayerError, DataSourceError
        from pyogrio.raw import write
    except ImportError:  # optional: only GeoPackage output needs it
        raise ImportError("writing GeoPackage needs the 'pyogrio' package: pip install pyogrio") from None
    path = Path(path)
    layer = layer or layer_name(question)
    names, arrays = _columns(polygons)
    geometry = np.array([shapely.to_wkb(p.geometry) for p in polygons], dtype=object)
    with atomic_path(path, overwrite, errors=(DataSourceError, DataLayerError)) as tmp, warnings.catch_warnings():
        # Pixel-coordinate outputs of a raster without CRS: the reader already told the user once.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        write(
            tmp, geometry, arrays, fields=names, layer=layer, driver="GPKG", geometry_type="Polygon",
            crs=crs.to_wkt() if crs is not None else None,
        )
    return path
