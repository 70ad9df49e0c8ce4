"""Visual-token compression connector (official ``SparseConv_1`` / ``Compression_Connector``).

res5 [B, C5, S/32, S/32] -> conv3x3/s2 -> LayerNorm over (C, H, W) jointly -> conv3x3/s2 ->
LayerNorm over (C, H, W) -> conv1x1 -> [B, (S/128)^2, D] tokens for the LLM.

There is no activation anywhere. The LayerNorms normalise each sample over all of C*H*W with a
per-position affine, so their shapes depend on the input size: ``size = image_size // 64``
(16 for the released 1024x1024 input, which therefore yields 8x8 = 64 tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .conv import Conv2d


class CompressionConnector(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, size: int) -> None:
        super().__init__()
        self.proj1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm([out_channels, size, size])
        self.proj2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
        half = (size + 1) // 2  # a stride-2, padding-1 conv rounds up
        self.norm2 = nn.LayerNorm([out_channels, half, half])
        self.fc = Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, res5: torch.Tensor) -> torch.Tensor:
        """res5 [B, C5, 2*size, 2*size] -> visual tokens [B, ceil(size/2)^2, out_channels]."""
        expected = self.norm1.normalized_shape[-1] * 2
        if res5.shape[-2:] != (expected, expected):
            raise InputError(
                f"connector expects a {expected}x{expected} res5 map (input side {expected * 32}), "
                f"got {tuple(res5.shape[-2:])}; resize or letterbox the image to the model's image_size"
            )
        x = self.norm1(self.proj1(res5))
        x = self.norm2(self.proj2(x))
        x = self.fc(x)
        return x.flatten(2).transpose(1, 2)
