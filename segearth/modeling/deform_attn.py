"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

The official code compiles a CUDA kernel and falls back to a ``grid_sample`` path when it is
missing; both use the same convention (bilinear, zero padding, pixel centres at +0.5), which is
what :func:`multi_scale_deformable_sampling` implements. It runs on any device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def multi_scale_deformable_sampling(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted bilinear sampling of every level at learned locations.

    Args:
        value: [B, sum(H*W), heads, head_dim]
        spatial_shapes: (H, W) per level, in the order the levels are concatenated.
        sampling_locations: [B, Q, heads, levels, points, 2] as (x, y) in [0, 1].
        attention_weights: [B, Q, heads, levels, points], softmax-normalised over levels*points.
    Returns:
        [B, Q, heads * head_dim]
    """
    b, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * heads, head_dim, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*heads, Q, points, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, head_dim, Q, levels*points]
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * weights).sum(-1).view(b, heads * head_dim, q)
    return out.transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention over ``levels`` feature maps, ``points`` samples per head and level."""

    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query [B, Q, C]; reference_points [B, Q, levels, 2] (x, y in [0,1]); value_input [B, S, C]."""
        b, q, _ = query.shape
        value = self.value_proj(value_input).view(b, value_input.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: normalise by (W, H).
        wh = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
        out = multi_scale_deformable_sampling(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
