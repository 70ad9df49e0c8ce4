"""Convolution for reduced-precision models on CPU (pixel decoder, connector)."""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from ..options import cpu_has_native_bf16

_native_bf16 = cache(cpu_has_native_bf16)  # /proc/cpuinfo read once per process


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that convolves emulated reduced precision on CPU in fp32 and rounds the result once.

    Without native bf16 hardware PyTorch's reduced-precision CPU convolution is a naive kernel
    (~150x slower than fp32; 86% of a bf16 pixel-decoder pass); fp16 is emulated on every x86 CPU. fp32
    accumulation and one rounding is what a reduced-precision convolution computes anyway, up to
    summation order. CPUs with native bf16 (AMX, AVX512-BF16) convolve bf16 as is: 1.9x faster than
    fp32 for the pixel decoder's 3x3 convolution at the released size on Zen 4.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not _emulated(x.dtype):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)


def _emulated(dtype: torch.dtype) -> bool:
    return dtype is torch.float16 or (dtype is torch.bfloat16 and not _native_bf16())
