"""Convolution for reduced-precision models on CPU (pixel decoder, connector)."""

from __future__ import annotations

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that convolves bf16/fp16 inputs on CPU in fp32 and rounds the result once.

    Without native bf16 hardware PyTorch's reduced-precision CPU convolution is a naive kernel
    (~150x slower than fp32; 86% of a bf16 pixel-decoder pass). fp32 accumulation and one rounding
    is what a reduced-precision convolution computes anyway, up to summation order.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float16):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)
