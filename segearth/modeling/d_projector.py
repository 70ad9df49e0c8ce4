"""Description projector (D-Projector): fuses the pooled description embedding with visual tokens
and turns it into the single query of the mask generator.

Official computation (``segearth_r1`` heads + ``D_Projector``), for one sample:
    p  = mean of the LLM's final hidden states over the description tokens        [D_llm]
    a  = pooled_proj(p)                                     (origin_SEG_token_projector)  [512]
    T  = latent_proj([p; H_desc])                           (text_projector)        [1+n, 512]
    V  = visual_proj(res5 tokens)                           (local_project)         [h*w, 512]
    T  = T + attn(T, [LN(V); LN(T)[0]]);  T = T + FF(T)     (one Perceiver block, pre-norm)
    d  = LN(T)[0]
    s  = query_proj([a; d])                                 (SEG_token_projector)   [hidden]
Only latent 0 joins the keys/values and only row 0 is returned, so the per-token rows never reach
``s``; they are still computed so that every intermediate matches the official tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import DProjectorConfig


@dataclass
class DProjectorOutput:
    query: torch.Tensor  # [B, 1, hidden] description embedding fed to the mask decoder
    pooled: torch.Tensor  # a: [B, 1, dim]
    visual: torch.Tensor  # V: [B, h*w, dim]
    fused: torch.Tensor  # d: [B, 1, dim]
    # Kept only with ``intermediates=True`` (parity checks); empty lists otherwise, so that normal
    # inference does not hold every block's activations.
    latents: list[torch.Tensor]  # T per sample: [1, 1, 1+n, dim]
    attn_out: list[list[torch.Tensor]]  # per sample, per block: attention output before the residual
    ff_out: list[list[torch.Tensor]]  # per sample, per block: feed-forward output before the residual


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media [B, T, n, dim], latents [B, T, m, dim] -> [B, T, m, dim]."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((media, latents[:, :, :1]), dim=-2)).chunk(2, dim=-1)
        b, t, m, _ = q.shape
        q, k, v = (x.reshape(b, t, x.shape[2], self.heads, -1).transpose(2, 3) for x in (q, k, v))
        sim = (q * self.scale) @ k.transpose(-2, -1)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = sim.softmax(dim=-1) @ v  # [B, T, heads, m, dh]
        return self.to_out(out.transpose(2, 3).reshape(b, t, m, -1))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )


class PerceiverBlock(nn.Module):
    def __init__(self, cfg: DProjectorConfig) -> None:
        super().__init__()
        self.attn = PerceiverAttention(cfg.dim, cfg.heads, cfg.dim_head)
        self.ff = _feed_forward(cfg.dim, cfg.ff_mult)


class DProjector(nn.Module):
    def __init__(self, cfg: DProjectorConfig, llm_dim: int, visual_dim: int, query_dim: int) -> None:
        super().__init__()
        self.pooled_proj = nn.Linear(llm_dim, cfg.dim)
        self.latent_proj = nn.Linear(llm_dim, cfg.dim)
        self.visual_proj = nn.Linear(visual_dim, cfg.dim)
        self.layers = nn.ModuleList(PerceiverBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.query_proj = nn.Linear(2 * cfg.dim, query_dim)

    def forward(self, description_states: list[torch.Tensor], res5: torch.Tensor,
                intermediates: bool = False) -> DProjectorOutput:
        """description_states: per sample [1 + n_i, D_llm] (row 0 = pooled mean); res5 [B, C5, h, w].

        ``intermediates``: also return every block's latents and outputs (see :class:`DProjectorOutput`)."""
        pooled = torch.stack([s[:1] for s in description_states])  # [B, 1, D_llm]
        a = self.pooled_proj(pooled)
        visual = self.visual_proj(res5.flatten(2).transpose(1, 2))
        latents, attn_outs, ff_outs, fused = [], [], [], []
        for b, states in enumerate(description_states):
            t = self.latent_proj(states)[None, None]  # [1, 1, 1+n, dim]
            if intermediates:
                latents.append(t)
            media = visual[b][None, None]
            attn_b, ff_b = [], []
            for block in self.layers:
                assert isinstance(block, PerceiverBlock)  # for the type checker: a ModuleList yields Modules
                attn = block.attn(media, t)
                t = t + attn
                ff = block.ff(t)
                t = t + ff
                if intermediates:
                    attn_b.append(attn)
                    ff_b.append(ff)
            if intermediates:
                attn_outs.append(attn_b)
                ff_outs.append(ff_b)
            fused.append(self.norm(t)[0, 0, :1])
        d = torch.stack(fused)  # [B, 1, dim]
        query = self.query_proj(torch.cat((a, d), dim=-1))
        return DProjectorOutput(query, a, visual, d, latents, attn_outs, ff_outs)
