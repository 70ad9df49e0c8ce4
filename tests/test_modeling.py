"""Unit tests of each component on tiny configurations (CPU, seconds)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from segearth import SegEarthR1, small_config
from segearth.config import SegEarthConfig, SwinConfig, released_config
from segearth.modeling.connector import CompressionConnector
from segearth.modeling.deform_attn import multi_scale_deformable_sampling
from segearth.modeling.prompt import (
    ANSWER_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN,
    REFER_TOKEN,
    SEG_TOKEN,
    build_prompt,
    render_prompt,
)
from segearth.modeling.swin import SwinEncoder
from segearth.tokenizer import byte_level_tokenizer

IDS = torch.tensor([[5, 6, IMAGE_TOKEN, 7, REFER_TOKEN, 8, SEG_TOKEN, 9]])


def test_swin_returns_res2_to_res5_for_any_size():
    enc = SwinEncoder(SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))).eval()
    for h, w in ((256, 256), (100, 164)):
        res = enc(torch.randn(2, 3, h, w))
        sizes = [(-(-h // 4)), (-(-h // 8)), (-(-h // 16)), (-(-h // 32))]
        assert [r.shape[1] for r in res] == [8, 16, 32, 64]
        assert [r.shape[2] for r in res] == sizes


def test_swin_drop_path_only_in_training():
    enc = SwinEncoder(SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.5))
    x = torch.randn(1, 3, 64, 64)
    enc.eval()
    assert torch.equal(enc(x)[-1], enc(x)[-1])
    enc.train()
    torch.manual_seed(0)
    a = enc(x)[-1]
    torch.manual_seed(1)
    assert not torch.equal(a, enc(x)[-1])


def test_connector_shapes_follow_image_size_and_refuse_other_sizes():
    assert released_config().connector_size == 16 and released_config().num_visual_tokens == 64
    conn = CompressionConnector(128, 64, size=4)
    assert conn(torch.randn(2, 128, 8, 8)).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="connector expects a 8x8 res5 map"):
        conn(torch.randn(1, 128, 16, 16))
    with pytest.raises(ValueError, match="multiple of 64"):
        SegEarthConfig(image_size=1000)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_connector_convolves_low_precision_in_float32_and_rounds_once(dtype):
    # The reduced-precision CPU convolution is a naive kernel (16 s of a 112 s bf16 question at the released
    # size); the connector convolves in float32 instead: exactly the float32 convolution of the same
    # rounded inputs and weights, rounded once.
    torch.manual_seed(0)
    connector = CompressionConnector(in_channels=32, out_channels=24, size=4).to(dtype)
    res5 = torch.randn(2, 32, 8, 8).to(dtype)
    with torch.no_grad():
        out = connector.proj1(res5)
        reference = torch.nn.functional.conv2d(res5.float(), connector.proj1.weight.float(),
                                               connector.proj1.bias.float(), stride=2, padding=1).to(dtype)
        tokens = connector(res5)
    assert out.dtype == dtype and torch.equal(out, reference)
    assert tokens.dtype == dtype and tokens.shape == (2, 4, 24) and torch.isfinite(tokens).all()


def test_deformable_sampling_at_pixel_centres_returns_the_pixel():
    h, w, heads, dim = 3, 5, 2, 4
    value = torch.randn(1, h * w, heads, dim)
    y, x = 1, 3
    loc = torch.tensor([(x + 0.5) / w, (y + 0.5) / h]).view(1, 1, 1, 1, 1, 2).expand(1, 1, heads, 1, 1, 2)
    out = multi_scale_deformable_sampling(value, [(h, w)], loc, torch.ones(1, 1, heads, 1, 1))
    assert torch.allclose(out.view(heads, dim), value[0, y * w + x], atol=1e-6)
    # half-way between two pixels: their mean; outside the map: zero padding
    loc_mid = torch.tensor([(x + 1) / w, (y + 0.5) / h]).view(1, 1, 1, 1, 1, 2).expand(1, 1, heads, 1, 1, 2)
    out = multi_scale_deformable_sampling(value, [(h, w)], loc_mid, torch.ones(1, 1, heads, 1, 1))
    expect = (value[0, y * w + x] + value[0, y * w + x + 1]) / 2
    assert torch.allclose(out.view(heads, dim), expect, atol=1e-6)
    outside = torch.full((1, 1, heads, 1, 1, 2), 2.0)
    assert multi_scale_deformable_sampling(value, [(h, w)], outside, torch.ones(1, 1, heads, 1, 1)).abs().max() == 0


def test_prompt_builder_reproduces_the_official_ids(parity_dir):
    raw = json.loads((parity_dir / "config.json").read_text())
    prompt_cfg = raw["prompt"]
    io = load_file(str(parity_dir / "io.safetensors"))
    tok = byte_level_tokenizer()
    assert render_prompt("reasoning") == prompt_cfg["conversation_prompt"]
    question = prompt_cfg["instruction_for_refer"].removeprefix(" ")
    built = build_prompt(question, tok, "reasoning", answer=prompt_cfg["answer_for_answer_slot"], with_labels=True)
    assert built.input_ids == io["input.input_ids"][0].tolist()
    assert built.refer_ids == io["input.token_refer_id_0"].tolist()
    assert built.answer_ids == io["input.token_answer_id_0"].tolist()
    assert built.labels == io["input.labels"][0].tolist()


def test_referring_prompt_has_no_answer_slot():
    tok = byte_level_tokenizer()
    built = build_prompt("the river", tok, "referring", with_labels=True)
    assert built.answer_ids is None and ANSWER_TOKEN not in built.input_ids
    assert built.input_ids.count(REFER_TOKEN) == 1 and built.refer_ids[-1] == 258
    assert built.labels[0] == IGNORE_INDEX and any(x != IGNORE_INDEX for x in built.labels)
    with pytest.raises(ValueError, match="question is empty"):
        build_prompt("  ", tok)


def test_text_after_the_description_cannot_change_the_mask(small_model):
    images = torch.randn(1, 3, 256, 256)
    ids = torch.tensor([[5, 6, IMAGE_TOKEN, 7, REFER_TOKEN, 8, SEG_TOKEN, 9, ANSWER_TOKEN, 10]])
    with torch.no_grad():
        a = small_model(ids, [torch.tensor([1, 2])], images=images, answer_ids=[torch.tensor([3, 4, 5])])
        b = small_model(ids, [torch.tensor([1, 2])], images=images, answer_ids=[torch.tensor([200, 7])])
    assert torch.allclose(a.mask_logits, b.mask_logits, atol=1e-5)


def test_d_projector_intermediates_only_when_asked(small_model):
    images = torch.randn(1, 3, 256, 256)
    ids = torch.tensor([[5, 6, IMAGE_TOKEN, 7, REFER_TOKEN, 8, SEG_TOKEN, 9]])
    with torch.no_grad():
        light = small_model(ids, [torch.tensor([1, 2])], images=images)
        full = small_model(ids, [torch.tensor([1, 2])], images=images, intermediates=True)
    assert light.d_projector.attn_out == light.d_projector.ff_out == light.d_projector.latents == []
    depth = len(small_model.d_projector.layers)
    assert len(full.d_projector.attn_out[0]) == len(full.d_projector.ff_out[0]) == depth
    assert len(full.d_projector.latents) == 1
    assert torch.equal(light.mask_logits, full.mask_logits)


def test_batching_and_cached_image_features_match_single_runs(small_model):
    images = torch.randn(2, 3, 256, 256)
    descriptions = [torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7, 8, 9])]
    ids = torch.tensor([[5, 6, IMAGE_TOKEN, 7, REFER_TOKEN, 8, 257], [5, 6, IMAGE_TOKEN, 7, REFER_TOKEN, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        batched = small_model(ids, descriptions, images=images, attention_mask=mask).mask_logits
        for i in range(2):
            single = small_model(ids[i : i + 1, : int(mask[i].sum())], descriptions[i : i + 1],
                                 image_features=small_model.encode_image(images[i : i + 1])).mask_logits
            assert torch.allclose(batched[i], single[0], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_agrees_with_float32(small_model, dtype):
    pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        reference = small_model(IDS, [torch.tensor([1, 2, 3])], images=small_model.normalize(pixels)).mask_logits
        model = copy.deepcopy(small_model).to(dtype)
        out = model(IDS, [torch.tensor([1, 2, 3])], images=model.normalize(pixels)).mask_logits
    assert out.dtype == dtype and torch.isfinite(out).all()
    # The same map up to rounding: highly correlated, and the same sign where fp32 is not near 0.
    pair = torch.stack((out.float().flatten(), reference.flatten()))
    assert torch.corrcoef(pair)[0, 1] > 0.99
    clear = reference.abs() > 0.1 * reference.abs().max()
    assert ((out.float() > 0) == (reference > 0))[clear].float().mean() > 0.99


def test_bad_inputs_give_clear_errors(small_model):
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, 256, 256\]"):
        small_model(IDS, [torch.tensor([1])], images=torch.randn(1, 3, 128, 128))
    with pytest.raises(ValueError, match="no <refer> placeholder"):
        small_model(torch.tensor([[5, IMAGE_TOKEN, 6]]), [torch.tensor([1])], images=torch.randn(1, 3, 256, 256))


def test_released_config_builds_on_meta_with_the_official_parameter_count():
    with torch.device("meta"):
        model = SegEarthR1(released_config())
    n = sum(p.numel() for p in model.parameters())
    # official total for vocab 50297 minus the unused parameters (seg_query, query banks, SEG/CLASS proj)
    unused = 100 * 2048 + 100 * 256 * 2 + 101 * 256 + 256 + 2 * (2 * 256 * 256 + 2 * 256)
    official_51200 = 1592194104
    assert n == official_51200 - 2 * (51200 - 50297) * 2048 - unused
    assert small_config().num_visual_tokens == 4
