"""The choices a user makes on every path (CLI, API, server), as enums: shown in ``--help``, checked once.

Kept free of heavy imports so that ``segearth --help`` stays instant.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from .errors import InputError

# Rasters above this many pixels are refused from their header, before a pixel is read: 1.5 gigapixels
# (~39k x 39k) is a large orthophoto, whose uint8 mask is 1.5 GB before compression and whose tiles mode
# runs thousands of windows; a decompression bomb declares far more. --max-pixels raises it.
DEFAULT_MAX_PIXELS = 1_500_000_000


class Mode(str, Enum):
    """How a raster larger than the model input is predicted (see :mod:`segearth.pipeline`)."""

    scene = "scene"
    tiles = "tiles"


class DType(str, Enum):
    """Numeric precision of the model weights and activations; ``auto`` picks the faster one."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"

    def torch(self, device: str = "cpu") -> Any:
        """The torch dtype; ``auto``: bfloat16 on CUDA and on CPUs with AMX, else float32.

        A CPU without native bf16 arithmetic (no AMX) emulates it: a released-size question measured ~2x
        slower than float32 on Ice Lake and 2.8x on Zen 3 (benchmarks/released.py), so float32 is its
        default there.
        """
        import torch

        if self is not DType.auto:
            return getattr(torch, self.value)
        if str(device).startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if str(device) == "cpu" and _cpu_has_amx() else torch.float32


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


class Quantize(str, Enum):
    """Optional int8 weights for the Linear layers on CPU (see :mod:`segearth.quantize`)."""

    none = "none"
    int8 = "int8"


class Task(str, Enum):
    """Prompt template: EarthReason questions or RRSIS-D referring expressions."""

    reasoning = "reasoning"
    referring = "referring"


def choice(enum: type[Enum], value: object, what: str) -> Any:
    """``enum(value)`` with a one-line error listing the valid values."""
    try:
        return enum(value)
    except ValueError:
        raise InputError(f"{what} must be one of {', '.join(str(e.value) for e in enum)}, got {value!r}") from None
