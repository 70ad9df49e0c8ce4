"""Mask → polygons, and polygon files (GeoJSON in WGS84, GeoPackage in the raster's CRS).

Coordinate choices:

* polygons are built in the raster's CRS (pixel edges mapped through its transform), so
  they overlay the input exactly; rasters without georeferencing give pixel coordinates
  (x = column, y = row, origin at the top-left corner);
* **GeoJSON** follows RFC 7946: coordinates are reprojected to WGS84 longitude/latitude
  and no ``crs`` member is written. Without georeferencing the pixel coordinates are
  written as they are and a ``segearth:coordinates`` foreign member says so;
* **GeoPackage** keeps the raster's native CRS (no resampling of vertices, exact areas).

Each feature carries the caller's properties (e.g. question, model), ``area`` in CRS
units² with ``area_units`` naming them, ``area_m2`` (computed in a Lambert azimuthal
equal-area projection centred on the mask, so it is right for geographic and Web Mercator
CRSs too; absent without georeferencing), and ``mean_probability`` when probabilities are
given.
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

from segearth.geo.paths import refuse_overwrite

WGS84 = CRS.from_epsg(4326)
LAYER = "segearth"


@dataclass(frozen=True)
class MaskPolygon:
    """One connected region of the mask, in the raster's CRS."""

    geometry: shapely.Polygon
    properties: dict[str, Any] = field(default_factory=dict)


def _area_units(crs: CRS | None) -> str:
    if crs is None:
        return "pixel^2"
    if crs.is_geographic:
        return "degree^2"
    return f"{crs.linear_units}^2"


def _equal_area_crs(crs: CRS, bounds: tuple[float, float, float, float]) -> CRS:
    """A local equal-area CRS centred on ``bounds`` (given in ``crs``)."""
    cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    lon_lat = transform_geom(crs, WGS84, {"type": "Point", "coordinates": (cx, cy)})["coordinates"]
    return CRS.from_proj4(f"+proj=laea +lat_0={lon_lat[1]} +lon_0={lon_lat[0]} +datum=WGS84 +units=m +no_defs")


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
    that many m² (pixel² without georeferencing), measured before simplification.
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

    areas = np.array([g.area for g in geoms])
    if crs is not None:
        local = _equal_area_crs(crs, shapely.total_bounds(geoms))
        areas_m2 = np.array([shape(g).area for g in transform_geom(crs, local, [mapping(g) for g in geoms])])
    else:
        areas_m2 = None
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

    units = _area_units(crs)
    base = dict(properties or {})
    out: list[MaskPolygon] = []
    for i, geom in enumerate(geoms):
        size = areas_m2[i] if areas_m2 is not None else areas[i]
        if size < min_area:
            continue
        if simplify_tolerance > 0:
            geom = geom.simplify(simplify_tolerance, preserve_topology=True)
        props: dict[str, Any] = {**base, "area": float(areas[i]), "area_units": units}
        if areas_m2 is not None:
            props["area_m2"] = float(areas_m2[i])
        if means is not None:
            props["mean_probability"] = float(means[i])
        out.append(MaskPolygon(geom, props))
    return out


def write_geojson(
    path: str | Path, polygons: Sequence[MaskPolygon], crs: CRS | None, overwrite: bool = False
) -> Path:
    """Write an RFC 7946 FeatureCollection (WGS84 lon/lat; pixel coordinates if ``crs`` is None)."""
    path = Path(path)
    refuse_overwrite([path], overwrite)
    geometries = [mapping(p.geometry) for p in polygons]
    if crs is not None and geometries:
        geometries = transform_geom(crs, WGS84, geometries)
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": i, "properties": p.properties, "geometry": _plain(g)}
            for i, (p, g) in enumerate(zip(polygons, geometries, strict=True))
        ],
    }
    if crs is None:
        collection["segearth:coordinates"] = "pixel (x = column, y = row); the raster has no georeferencing"
    path.write_text(json.dumps(collection, allow_nan=False))
    return path


def _plain(geometry: Mapping[str, Any]) -> dict[str, Any]:
    """GeoJSON mapping with lists instead of tuples (``transform_geom`` returns a GeoJSON-like object)."""
    return json.loads(json.dumps(dict(geometry)))


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
    layer: str = LAYER,
) -> Path:
    """Write the polygons to a GeoPackage layer in the raster's native CRS (needs ``pyogrio``)."""
    try:
        from pyogrio.raw import write
    except ImportError:  # optional: only GeoPackage output needs it
        raise ImportError("writing GeoPackage needs the 'pyogrio' package: pip install pyogrio") from None
    path = Path(path)
    refuse_overwrite([path], overwrite)
    if path.exists():
        path.unlink()  # GPKG is a database: writing into an old file would keep its other layers
    names, arrays = _columns(polygons)
    geometry = np.array([shapely.to_wkb(p.geometry) for p in polygons], dtype=object)
    with warnings.catch_warnings():
        # Pixel-coordinate outputs of a raster without CRS: the reader already told the user once.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        write(
            path, geometry, arrays, fields=names, layer=layer, driver="GPKG", geometry_type="Polygon",
            crs=crs.to_wkt() if crs is not None else None,
        )
    return path
