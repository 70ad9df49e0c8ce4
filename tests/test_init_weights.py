"""Reference initialisation of the parts trained from scratch (Mask2Former / Deformable-DETR)."""

from __future__ import annotations

import math

import torch

from segearth.config import small_config
from segearth.modeling.deform_attn import MSDeformAttn
from segearth.modeling.mask_decoder import CrossAttentionLayer
from segearth.modeling.segearth_r1 import SegEarthR1


def test_sampling_offsets_start_as_the_directional_grid() -> None:
    attn = MSDeformAttn(dim=32, levels=3, heads=8, points=4)
    attn.reset_parameters()
    assert not attn.sampling_offsets.weight.any() and not attn.attention_weights.weight.any()
    assert not attn.attention_weights.bias.any() and not attn.value_proj.bias.any() and not attn.output_proj.bias.any()
    grid = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    # Written out independently: head h points along angle 2*pi*h/8, scaled so its larger coordinate
    # is +-1 (a unit square's border), point p at (p + 1) times that, the same on every level.
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
                              dtype=torch.float32)
    for h in range(8):
        for p in range(4):
            for level in range(3):
                torch.testing.assert_close(grid[h, level, p], directions[h] * (p + 1), atol=1e-5, rtol=0)
    # Uniform attention: zero logits, so the softmax over levels x points is 1/12 everywhere.
    q = torch.randn(2, 5, 32)
    logits = attn.attention_weights(q).view(2, 5, 8, 12)
    torch.testing.assert_close(logits.softmax(-1), torch.full_like(logits, 1 / 12))
    bound = math.sqrt(6 / (32 + 32))  # xavier_uniform on a square 32x32 matrix
    assert attn.value_proj.weight.abs().max() <= bound and attn.value_proj.weight.std() > bound / 4


def _heads(model: SegEarthR1) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("pixel_decoder.", "mask_decoder."))}


def test_init_weights_is_deterministic_under_a_seed_and_touches_only_the_heads() -> None:
    torch.manual_seed(0)
    model = SegEarthR1(small_config(128))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    model.init_weights()
    first = _heads(model)
    torch.manual_seed(1)
    model.init_weights()
    assert all(torch.equal(first[k], v) for k, v in _heads(model).items())
    after = model.state_dict()
    untouched = [k for k in before if not k.startswith(("pixel_decoder.", "mask_decoder."))]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)  # encoder, LLM, connector...
    changed = [k for k in first if not torch.equal(before[k], first[k])]
    assert "pixel_decoder.transformer.level_embed" in changed
    assert "pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.bias" in changed
    assert "mask_decoder.transformer_self_attention_layers.0.self_attn.in_proj_weight" in changed
    cross = model.mask_decoder.transformer_cross_attention_layers[0]
    assert isinstance(cross, CrossAttentionLayer) and cross.multihead_attn.in_proj_bias is not None
    assert not cross.multihead_attn.in_proj_bias.any()
