"""segearth: geospatial pixel reasoning with SegEarth-R1 in pure PyTorch."""

from .config import SegEarthConfig, released_config, small_config
from .modeling.segearth_r1 import SegEarthR1

__all__ = ["SegEarthConfig", "SegEarthR1", "released_config", "small_config"]
__version__ = "0.1.0"
