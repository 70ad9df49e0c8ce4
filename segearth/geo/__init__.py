"""Geospatial input/output: rasters in, georeferenced masks and polygons out.

* :mod:`segearth.geo.read` — open any raster, pick bands, stretch to uint8 RGB, overviews
  and windows, validity masks; :mod:`segearth.geo.letterbox` — fit to the model input;
* :mod:`segearth.geo.tiles` — tile planning, logit stitching, block-wise upsampling;
* :mod:`segearth.geo.write` — mask GeoTIFF, PNG preview, plus the polygon writers of
  :mod:`segearth.geo.vector` and the naming helpers of :mod:`segearth.geo.paths`.
"""
