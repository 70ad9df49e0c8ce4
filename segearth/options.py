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

    def torch(self, device: str = "cpu", parameters: int | None = None) -> Any:
        """The torch dtype; ``auto``: bfloat16 on CUDA, and on CPUs with native bf16 arithmetic (AMX or
        AVX512-BF16) for models of at least :data:`AUTO_BF16_MIN_PARAMETERS` stored ``parameters``
        (None: unknown, counted as large); float32 otherwise.

        Measured with benchmarks/released.py (released size, 2 threads): on Zen 4 (AVX512-BF16) bfloat16
        answers the first question 1.7-2.2x faster than float32 with the same mask; a CPU without native
        bf16 emulates it, ~2x slower than float32 on Ice Lake and 2.8x on Zen 3, so float32 is its default.
        """
        import torch

        if self is not DType.auto:
            return getattr(torch, self.value)
        if str(device).startswith("cuda"):
            return torch.bfloat16
        large = parameters is None or parameters >= AUTO_BF16_MIN_PARAMETERS
        return torch.bfloat16 if str(device) == "cpu" and large and cpu_has_native_bf16() else torch.float32


#: Below this many stored parameters a CPU question costs overhead, not matrix products: bf16 gains
#: nothing there (segearth-nano on Zen 4: the same 0.12 s as float32) and only rounds the mask (IoU
#: 0.97-1.0 with float32), so ``auto`` keeps float32 and the built-in model answers alike on every CPU.
AUTO_BF16_MIN_PARAMETERS = 100_000_000

#: /proc/cpuinfo flags of x86 CPUs that compute bf16 products natively (AMX tiles, AVX-512 dot products).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (then bf16 is the faster CPU precision)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


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
