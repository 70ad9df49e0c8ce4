"""The language model: ``transformers``' Phi decoder plus a bias-free LM head.

The released checkpoints were saved with transformers 4.36, whose Phi attention has ONE fused
``query_key_value`` projection; current transformers has separate ``q_proj``/``k_proj``/``v_proj``.
:func:`split_fused_qkv` converts exactly (see ``segearth.checkpoint``). The official model replaces
Phi's LM head by a bias-free Linear; so do we.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PhiConfig as HFPhiConfig
from transformers import PhiModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from ..config import PhiConfig
from .language_model import LanguageModel


def hf_phi_config(cfg: PhiConfig) -> HFPhiConfig:
    """transformers' PhiConfig for our sizes (no dropout; attention through scaled_dot_product_attention)."""
    hf = HFPhiConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        rope_parameters={
            "rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": cfg.partial_rotary_factor
        },
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        qk_layernorm=False,
        tie_word_embeddings=False,
    )
    # SDPA: the fused kernel, equal to the eager softmax(QK^T)V within float32 rounding (parity tests).
    hf._attn_implementation = "sdpa"
    return hf


def split_fused_qkv(weight: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split transformers-4.36 Phi ``query_key_value`` (weight [3D, D] or bias [3D]) into q, k, v.

    The fused output is laid out per head as [heads, 3, head_dim]: q, k and v are interleaved
    head by head, not stored as three contiguous blocks.
    """
    rest = weight.shape[1:]
    per_head = weight.view(num_heads, 3, -1, *rest)
    return tuple(per_head[:, i].reshape(-1, *rest) for i in range(3))  # type: ignore[return-value]


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of :func:`split_fused_qkv`."""
    rest = q.shape[1:]
    stacked = torch.stack([t.view(num_heads, -1, *rest) for t in (q, k, v)], dim=1)
    return stacked.reshape(-1, *rest)


class PhiLanguageModel(LanguageModel):
    """Phi decoder run on spliced input embeddings; returns the final-LayerNorm hidden states."""

    is_causal = True
    supports_prefix_cache = True  # a prompt prefix can be cached and continued
    has_lm_head = True
    supports_lora = True
    supports_gradient_checkpointing = True

    def __init__(self, cfg: PhiConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.phi = PhiModel(hf_phi_config(cfg))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def reset_rotary(self) -> None:
        """Rebuild the rotary-frequency buffers (not saved in checkpoints) on the current device."""
        device = self.phi.embed_tokens.weight.device
        self.phi.rotary_emb = PhiRotaryEmbedding(self.phi.config).to(device)

    def new_cache(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None, batch: int = 1) -> DynamicCache:
        """A key/value cache for :meth:`forward`: empty, or holding ``prefix`` (see :meth:`cache_prefix`)
        repeated ``batch`` times. The prefix tensors are expanded, not copied, and never written to:
        continuing the cache concatenates into new tensors."""
        if prefix is None:
            return DynamicCache(config=self.phi.config)
        data = [(k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])) for k, v in prefix]
        return DynamicCache(ddp_cache_data=data, config=self.phi.config)

    def cache_prefix(self, cache: Cache, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``length`` positions of every layer's keys and values (views of ``cache``)."""
        prefix = []
        for layer in cache.layers:
            # Phi's cache holds a key/value layer per decoder layer, filled by the prefix pass.
            assert isinstance(layer, CacheLayerMixin) and layer.keys is not None and layer.values is not None
            prefix.append((layer.keys[:, :, :length], layer.values[:, :, :length]))
        return prefix

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> embeddings [..., D]."""
        return self.phi.embed_tokens(ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, Cache | None]:
        """inputs_embeds [B, L, D] -> (last_hidden_state [B, L, D] after the final LayerNorm, cache).

        With ``cache`` (a key/value cache of a prompt prefix), only the new positions are passed and
        positions continue after the cached ones.
        """
        out = self.phi(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state, out.cache

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, V] (only the training LM loss needs them)."""
        return self.lm_head(hidden_states)

    def lora_target(self) -> nn.Module:
        """The Phi decoder (its attention and MLP linear layers take the adapters; the LM head does not)."""
        return self.phi

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint every decoder layer, as the official run. Non-reentrant: works with frozen inputs and
        with DDP's gradient hooks."""
        self.phi.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
