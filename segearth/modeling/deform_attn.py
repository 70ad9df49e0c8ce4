"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

The official code compiles a CUDA kernel (with a slow ``grid_sample`` fallback); both sample
bilinearly with zero padding and pixel centres at +0.5 (``grid_sample``'s ``align_corners=False``)
and compute in fp32. :func:`multi_scale_deformable_sampling` follows that convention without
``grid_sample``: each sample becomes four weighted reads of one flat table that holds every level,
head and image, and a single ``embedding_bag`` per chunk of queries does all the reads and the
weighted sum. It runs on any device and dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Bilinear corner reads per chunk of queries: bounds the index/weight tensors (~50 MB) and keeps
# the number of ops low (each op is a thread barrier; on a busy CPU many small ones stall).
_CORNERS_PER_CHUNK = 1 << 21


class _Layout(NamedTuple):
    """Per-sample constants of the framed table, broadcastable to [B, Q, heads, levels, points]."""

    width: torch.Tensor  # W of the sample's level (float)
    height: torch.Tensor  # H of the sample's level (float)
    down: torch.Tensor  # table rows between a pixel and the one below it
    origin: torch.Tensor  # table row of pixel (0, 0) of the sample's level, image and head

    def expand(self, *shape: int) -> _Layout:
        # Materialised, not broadcast: broadcasting over the short inner dimensions (levels,
        # points) makes every elementwise op ~10x slower on CPU.
        return _Layout(*(t.expand(shape).contiguous() for t in self))

    def first_queries(self, q: int) -> _Layout:
        """The constants of the first ``q`` queries (a shorter last chunk)."""
        return _Layout(*(t[:, :q] for t in self))


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
        sampling_locations: [B, Q, heads, levels, points, 2] as (x, y) in [0, 1]; outside the map
            reads zeros. Non-finite locations read zeros too (``grid_sample`` would give NaN).
        attention_weights: [B, Q, heads, levels, points], softmax-normalised over levels*points.
    Returns:
        [B, Q, heads * head_dim] in the dtype of ``value``, computed in fp32.
    """
    b, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {levels} sampling levels")
    table, layout = _framed_table(value, spatial_shapes)
    chunk = max(1, min(q, _CORNERS_PER_CHUNK // (b * heads * levels * points * 4)))
    layout = layout.expand(b, chunk, heads, levels, points)
    out = table.new_empty(b, q, heads * head_dim)
    for i in range(0, q, chunk):
        out[:, i : i + chunk] = _sample_chunk(
            table, layout, sampling_locations[:, i : i + chunk], attention_weights[:, i : i + chunk]
        )
    return out.to(value.dtype)


def _framed_table(value: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, _Layout]:
    """[B, S, heads, d] -> (fp32 table [B * S' * heads, d], its layout), each level framed by zeros:
    one row/column before, two after. Table rows are (image, framed pixel, head) triples.

    The frame makes zero padding free: a coordinate clamped to [-1, W] only reads corners inside
    the frame, and those outside the map read zeros, so no validity mask is needed. Two trailing
    rows/columns because a coordinate clamped to exactly W still reads corner W + 1 (weight 0).
    """
    b, _, heads, d = value.shape
    rows = sum((h + 3) * (w + 3) for h, w in spatial_shapes)
    table = value.new_zeros(b, rows, heads * d, dtype=torch.float32)  # fp32 whatever the model dtype
    starts, start = [], 0
    for v, (h, w) in zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes, strict=True):
        framed = table[:, start : start + (h + 3) * (w + 3)].view(b, h + 3, w + 3, heads * d)
        framed[:, 1 : h + 1, 1 : w + 1] = v.reshape(b, h, w, heads * d)
        starts.append(start + (w + 3) + 1)  # skip the top frame row and the left frame column
        start += (h + 3) * (w + 3)

    def per_level(values: list[int], dtype: torch.dtype) -> torch.Tensor:  # [levels, 1]
        return torch.tensor(values, dtype=dtype, device=value.device).view(-1, 1)

    image = torch.arange(b, device=value.device).view(b, 1, 1, 1, 1) * rows
    head = torch.arange(heads, device=value.device).view(heads, 1, 1)
    layout = _Layout(
        width=per_level([w for _, w in spatial_shapes], torch.float32),
        height=per_level([h for h, _ in spatial_shapes], torch.float32),
        down=per_level([(w + 3) * heads for _, w in spatial_shapes], torch.int64),
        origin=(image + per_level(starts, torch.int64)) * heads + head,
    )
    return table.view(-1, d), layout


def _sample_chunk(
    table: torch.Tensor, layout: _Layout, locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    """[B, q, heads, levels, points, 2] locations -> [B, q, heads * d] weighted samples."""
    b, q, heads = locations.shape[:3]
    layout = layout.first_queries(q)
    locations, attention_weights = locations.float(), attention_weights.float()
    x0, fx = _corner(locations[..., 0], layout.width)
    y0, fy = _corner(locations[..., 1], layout.height)
    top_left = x0 * heads + y0 * layout.down + layout.origin  # one pixel step is ``heads`` rows
    index = torch.stack((top_left, top_left + heads, top_left + layout.down, top_left + layout.down + heads), -1)
    # Fold the attention weight into the bilinear corner weights: the bag's weighted sum then does
    # the interpolation and the attention at once, with no [.., levels*points, d] tensor.
    top, bottom, left = (1 - fy) * attention_weights, fy * attention_weights, 1 - fx
    weights = torch.stack((top * left, top * fx, bottom * left, bottom * fx), -1)
    bags = b * q * heads
    out = F.embedding_bag(index.view(bags, -1), table, per_sample_weights=weights.view(bags, -1), mode="sum")
    return out.view(b, q, -1)


def _corner(coord: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised coordinate -> (integer pixel left of/above it, fractional offset from that pixel)."""
    pix = coord * size - 0.5  # align_corners=False: pixel i covers [i, i + 1), centre at i + 0.5
    # Into the zero frame: at -1 or ``size`` only zeros are read. ``where`` also sends NaN to -1.
    pix = torch.where(pix > -1, pix, -1.0).minimum(size)
    corner = pix.floor()
    return corner.long(), pix - corner


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

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR's initialisation (``MSDeformAttn._reset_parameters``, as transformers' Mask2Former).

        Offsets start as a fixed grid: head h samples along the direction at angle 2*pi*h/heads (scaled so
        its larger coordinate is 1), point p at (p + 1) pixels along it, on every level; attention starts
        uniform (zero logits); the value and output projections are Xavier-uniform with zero bias.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        grid *= torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

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
        # Offsets are in pixels of each level: normalise by (W, H). Locations are fp32 whatever the
        # model dtype, as in the official code (fp32 reference points): a bf16 location near 1 on a
        # 128-wide map would be rounded by up to a quarter of a pixel.
        wh = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device)
        locations = (reference_points.float()[:, :, None, :, None, :]
                     + offsets.float() / wh[None, None, None, :, None, :])
        out = multi_scale_deformable_sampling(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
