"""Mask2Former-style pixel decoder: a deformable-attention encoder over res5, res4, res3 plus a
one-level FPN on res2 that yields the stride-4 mask features.

Parameter names follow the official checkpoint (``input_proj``, ``transformer.encoder.layers``,
``transformer.level_embed``, ``adapter_1``, ``layer_1``, ``mask_features``). Specifics of the
released weights: the FPN convolutions have biases, the top-down upsampling is bilinear, and the
encoder FFN width is 1024 whatever the model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PixelDecoderConfig
from .conv import Conv2d
from .deform_attn import MSDeformAttn
from .position_encoding import sine_position_encoding

NUM_ENCODER_LEVELS = 3  # res5, res4, res3


@dataclass
class PixelDecoderOutput:
    mask_features: torch.Tensor  # [B, mask_dim, S/4, S/4]
    multi_scale_features: list[torch.Tensor]  # [B, conv_dim, h, w] at strides 32, 16, 8
    encoder_memory: torch.Tensor  # [B, sum(h*w), conv_dim] (levels res5, res4, res3)
    spatial_shapes: list[tuple[int, int]]


class DeformableEncoderLayer(nn.Module):
    """Post-norm: x = LN1(x + MSDeformAttn(x + pos)); x = LN2(x + FFN(x))."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, NUM_ENCODER_LEVELS, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src, pos, reference_points, spatial_shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    def __init__(self, layers: int, dim: int, ffn_dim: int, heads: int, points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(dim, ffn_dim, heads, points) for _ in range(layers))


class DeformableTransformer(nn.Module):
    """Flattens the levels, adds positional + level embeddings and runs the encoder layers."""

    def __init__(self, cfg: PixelDecoderConfig) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(NUM_ENCODER_LEVELS, cfg.conv_dim))
        self.encoder = DeformableEncoder(
            cfg.num_encoder_layers, cfg.conv_dim, cfg.ffn_dim, cfg.num_heads, cfg.num_points
        )

    @staticmethod
    def reference_points(shapes: list[tuple[int, int]], device) -> torch.Tensor:
        """Pixel centres ((x+0.5)/W, (y+0.5)/H) of every token, shared by all levels: [1, S, L, 2].

        Always fp32, as in the official code: bf16 rounds the centres of maps whose side is not a
        power of two (by up to a fifth of a pixel at 96 wide).
        """
        refs = []
        for h, w in shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(refs, 0)
        return ref[None, :, None, :].expand(1, ref.shape[0], len(shapes), 2)

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(pos)], 1
        )
        ref = self.reference_points(shapes, src.device)
        for layer in self.encoder.layers:
            src = layer(src, pos_flat, ref, shapes)
        return src, shapes


def _conv_gn(cin: int, cout: int, k: int, groups: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [Conv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _convs(*parts: nn.Module) -> list[nn.Conv2d]:
    """The convolutions inside ``parts``."""
    return [m for part in parts for m in part.modules() if isinstance(m, nn.Conv2d)]


class PixelDecoder(nn.Module):
    """(res2, res3, res4, res5) -> mask features (stride 4) and three multi-scale maps."""

    def __init__(self, cfg: PixelDecoderConfig, in_channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.conv_dim
        # Level order low -> high resolution: res5, res4, res3.
        self.input_proj = nn.ModuleList(
            _conv_gn(c, d, 1, cfg.num_groups, relu=False) for c in (in_channels[3], in_channels[2], in_channels[1])
        )
        self.transformer = DeformableTransformer(cfg)
        self.adapter_1 = _conv_gn(in_channels[0], d, 1, cfg.num_groups, relu=True)
        self.layer_1 = _conv_gn(d, d, 3, cfg.num_groups, relu=True)
        self.mask_features = Conv2d(d, cfg.mask_dim, kernel_size=1)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mask2Former's initialisation of a pixel decoder trained from scratch (``MSDeformAttnPixelDecoder``).

        Input projections: Xavier-uniform, zero bias. Encoder: Xavier-uniform for every matrix, then each
        deformable attention's own reset (the sampling-offset grid, see :meth:`MSDeformAttn.reset_parameters`);
        level embeddings N(0, 1). Lateral/output convolutions: detectron2's ``c2_xavier_fill``
        (Kaiming-uniform with a=1, zero bias). GroupNorm/LayerNorm keep ones and zeros.
        """
        for conv in _convs(self.input_proj):
            nn.init.xavier_uniform_(conv.weight, gain=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for param in self.transformer.encoder.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.transformer.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.transformer.level_embed)
        for conv in _convs(self.adapter_1, self.layer_1, self.mask_features):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, features: tuple[torch.Tensor, ...]) -> PixelDecoderOutput:
        res2, res3, res4, res5 = features
        srcs, pos = [], []
        for proj, x in zip(self.input_proj, (res5, res4, res3), strict=True):
            srcs.append(proj(x))
            pe = sine_position_encoding(x.shape[2], x.shape[3], self.cfg.conv_dim // 2, device=x.device)
            pos.append(pe.to(x.dtype).expand(x.shape[0], -1, -1, -1))
        memory, shapes = self.transformer(srcs, pos)
        b = memory.shape[0]
        maps = [
            m.transpose(1, 2).reshape(b, -1, h, w)
            for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes, strict=True)
        ]
        lateral = self.adapter_1(res2)
        top_down = F.interpolate(maps[-1].float(), size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        fpn = self.layer_1(lateral + top_down.to(lateral.dtype))
        return PixelDecoderOutput(
            mask_features=self.mask_features(fpn),
            multi_scale_features=maps,
            encoder_memory=memory,
            spatial_shapes=shapes,
        )
