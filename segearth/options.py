"""The choices a user makes on every path (CLI, API, server), as enums: shown in ``--help``, checked once.

Kept free of heavy imports so that ``segearth --help`` stays instant.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

# Rasters above this many pixels are refused from their header, before a pixel is read: 1.5 gigapixels
# (~39k x 39k) is a large orthophoto, whose uint8 mask is 1.5 GB before compression and whose tiles mode
# runs thousands of windows; a decompression bomb declares far more. --max-pixels raises it.
DEFAULT_MAX_PIXELS = 1_500_000_000


class Mode(str, Enum):
    """How a raster larger than the model input is predicted (see :mod:`segearth.pipeline`)."""

    scene = "scene"
    tiles = "tiles"


class DType(str, Enum):
    """Numeric precision of the model weights and activations."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"

    def torch(self) -> Any:
        import torch

        return getattr(torch, self.value)


class Task(str, Enum):
    """Prompt template: EarthReason questions or RRSIS-D referring expressions."""

    reasoning = "reasoning"
    referring = "referring"


def choice(enum: type[Enum], value: object, what: str) -> Any:
    """``enum(value)`` with a one-line error listing the valid values."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {', '.join(str(e.value) for e in enum)}, got {value!r}") from None
