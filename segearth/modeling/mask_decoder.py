"""Mask generator: a masked-attention transformer decoder with ONE query, the description embedding.

Official ``MultiScaleMaskedTransformerDecoderForOPTPreTrain.forward_woconcat`` with the released
settings (``use_seg_query=False``): the query is the D-Projector output, its positional embedding is
zero, and each of the ``num_layers`` post-norm layers does masked cross-attention to one level of the
pixel decoder (round robin, coarse to fine), self-attention, and an FFN. Every layer (and the raw
query) predicts mask logits by a dot product with the stride-4 mask features; the previous
prediction masks the next cross-attention.

Parameter names follow the official checkpoint (``transformer_cross_attention_layers`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MaskDecoderConfig
from .position_encoding import sine_position_encoding

NUM_LEVELS = 3


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query, memory, pos, attn_mask):
        """query [1, B, C] (one query per batch row), memory and pos [hw, B or 1, C], attn_mask
        [B*heads, 1, hw]. With the memory of one image (batch 1) for B questions, the B queries attend
        to it as one sequence, each under its own mask: the memory's keys and values are projected
        once instead of once per question."""
        batch = query.shape[1]
        if memory.shape[1] == batch:
            out = self.multihead_attn(query, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
            return self.norm(query + out)
        heads = self.multihead_attn.num_heads
        per_query = attn_mask.view(batch, heads, -1).transpose(0, 1)  # [heads, B, hw]: masks per query
        queries = query.transpose(0, 1)  # [B, 1, C]: the questions as one sequence
        out = self.multihead_attn(queries, memory + pos, memory, attn_mask=per_query, need_weights=False)[0]
        return self.norm(query + out.transpose(0, 1))


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query):
        out = self.self_attn(query, query, query, need_weights=False)[0]
        return self.norm(query + out)


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (not after the last)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, cfg: MaskDecoderConfig, mask_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d, cfg.num_heads) for _ in range(cfg.num_layers)
        )
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d, cfg.num_heads) for _ in range(cfg.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(d, cfg.ffn_dim) for _ in range(cfg.num_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.level_embed = nn.Embedding(NUM_LEVELS, d)
        self.mask_embed = MLP([d, d, d, mask_dim])

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mask2Former's initialisation of the transformer decoder trained from scratch: every matrix of the
        attention and FFN layers Xavier-uniform, attention input biases zero (``_reset_parameters`` of its
        Self/Cross/FFN layers). The level embedding (N(0, 1)) and the mask MLP keep PyTorch's default
        initialisation, as in the original."""
        layers = (*self.transformer_cross_attention_layers, *self.transformer_self_attention_layers,
                  *self.transformer_ffn_layers)
        for layer in layers:
            for param in layer.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)
            for module in layer.modules():
                if isinstance(module, nn.MultiheadAttention) and module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)

    def predict_mask(
        self, query: torch.Tensor, mask_features: torch.Tensor, next_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [1, B, C] -> (mask logits [B, 1, h4, w4], blocked-attention mask [B*heads, 1, next h*w]).

        ``mask_features`` [B or 1, mask_dim, h4, w4]: batch 1 is one image's features for all B queries."""
        embed = self.mask_embed(self.decoder_norm(query).transpose(0, 1))
        if mask_features.shape[0] == embed.shape[0]:
            logits = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        else:
            logits = torch.einsum("bqc,chw->bqhw", embed, mask_features[0])
        small = F.interpolate(logits.float(), size=next_size, mode="bilinear", align_corners=False)
        blocked = small.sigmoid().flatten(2) < 0.5  # True = may not attend
        blocked = blocked.unsqueeze(1).repeat(1, self.cfg.num_heads, 1, 1).flatten(0, 1)
        return logits, blocked.detach()

    def forward(
        self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor, query: torch.Tensor
    ) -> list[torch.Tensor]:
        """Returns the mask logits [B, 1, S/4, S/4] of the raw query and of every layer (last = final).

        Args:
            multi_scale_features: three maps [B, C, h, w], coarse to fine.
            mask_features: [B, mask_dim, S/4, S/4].
            query: the description embedding [B, 1, C].

        Several questions about one image (features repeated as stride-0 views, ``ImageFeatures.repeat``)
        share that image's memory: its projections and mask products are computed once, not per question.
        """
        if mask_features.shape[0] > 1 and all(t.stride(0) == 0 for t in (mask_features, *multi_scale_features)):
            mask_features = mask_features[:1]
            multi_scale_features = [x[:1] for x in multi_scale_features]
        srcs, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            h, w = x.shape[-2:]
            sizes.append((h, w))
            pe = sine_position_encoding(h, w, self.cfg.hidden_dim // 2, device=x.device).to(x.dtype)
            pos.append(pe.flatten(2).permute(2, 0, 1))  # [h*w, 1, C]
            src = x.flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))  # [h*w, B, C]
        output = query.transpose(0, 1)  # [1, B, C]; its positional embedding is zero
        masks = []
        logits, blocked = self.predict_mask(output, mask_features, sizes[0])
        masks.append(logits)
        for i in range(self.cfg.num_layers):
            level = i % NUM_LEVELS
            # A query that may attend nowhere attends everywhere instead.
            blocked[blocked.all(-1)] = False
            output = self.transformer_cross_attention_layers[i](output, srcs[level], pos[level], blocked)
            output = self.transformer_self_attention_layers[i](output)
            output = self.transformer_ffn_layers[i](output)
            logits, blocked = self.predict_mask(output, mask_features, sizes[(i + 1) % NUM_LEVELS])
            masks.append(logits)
        return masks
