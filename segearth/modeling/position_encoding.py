"""Normalised sine positional encoding shared by the pixel decoder and the mask decoder."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(
    height: int, width: int, num_feats: int, *, device: torch.device, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR-style 2-D sine encoding with ``normalize=True`` (scale 2*pi), for an unpadded map.

    Returns [1, 2*num_feats, H, W] float32: ``[pos_y; pos_x]``, each half interleaving sin/cos.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    # cumsum of an all-ones mask divided by its last value, as in the reference.
    y = y / (height + eps) * scale
    x = x / (width + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = y[:, None] / dim_t  # [H, F]
    pos_x = x[:, None] / dim_t  # [W, F]
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = pos_y[:, None, :].expand(height, width, num_feats)
    pos_x = pos_x[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0)
