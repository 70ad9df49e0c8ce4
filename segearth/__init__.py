"""segearth: geospatial pixel reasoning with SegEarth-R1 in pure PyTorch.

The model classes are imported lazily so that light tools (raster I/O, metrics, ``--help``) do not
pay for importing ``transformers``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Result", "SegEarth", "SegEarthConfig", "SegEarthR1", "load", "released_config", "small_config"]


def __getattr__(name: str) -> Any:
    if name in ("load", "SegEarth", "Result"):
        from . import api

        return getattr(api, name)
    if name in ("SegEarthConfig", "released_config", "small_config"):
        from . import config

        return getattr(config, name)
    if name == "SegEarthR1":
        from .modeling.segearth_r1 import SegEarthR1

        return SegEarthR1
    raise AttributeError(f"module 'segearth' has no attribute {name!r}")
