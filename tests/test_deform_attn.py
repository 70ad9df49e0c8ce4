"""The gather-based deformable sampling core against the grid_sample form it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from segearth.config import PixelDecoderConfig
from segearth.modeling.deform_attn import multi_scale_deformable_sampling
from segearth.modeling.pixel_decoder import DeformableTransformer, PixelDecoder


def grid_sample_reference(value, spatial_shapes, sampling_locations, attention_weights):
    """The official PyTorch fallback (``ms_deform_attn_core_pytorch``): grid_sample per level.

    Kept here and in ``benchmarks/deform.py`` only, as the reference the fast core must equal.
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


def random_inputs(shapes, b=2, q=37, heads=4, head_dim=8, points=3, spread=(-0.3, 1.3), seed=0):
    """Value, locations (a share of them outside [0, 1]) and softmax attention weights."""
    gen = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, head_dim, generator=gen)
    lo, hi = spread
    locations = torch.rand(b, q, heads, levels, points, 2, generator=gen) * (hi - lo) + lo
    logits = torch.randn(b, q, heads, levels * points, generator=gen)
    weights = logits.softmax(-1).view(b, q, heads, levels, points)
    return value, locations, weights


SHAPES = [
    [(6, 9), (3, 5), (1, 2)],  # non-square, down to a single row
    [(16, 16), (8, 8), (4, 4)],
    [(1, 1)],
    [(5, 3), (11, 7)],  # levels need not shrink
]


@pytest.mark.parametrize("shapes", SHAPES)
def test_fast_core_equals_grid_sample(shapes):
    value, locations, weights = random_inputs(shapes)
    out = multi_scale_deformable_sampling(value, shapes, locations, weights)
    ref = grid_sample_reference(value, shapes, locations, weights)
    assert out.shape == ref.shape == (2, 37, 4 * 8)
    assert (out - ref).abs().max() <= 1e-5
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors


def test_border_and_far_outside_locations():
    shapes = [(4, 6), (2, 3)]
    value, locations, weights = random_inputs(shapes, q=12, points=4)
    h, w = torch.tensor([4.0, 2.0]), torch.tensor([6.0, 3.0])
    per_level = torch.stack((w, h), -1)[:, None, :]  # [levels, 1, 2] as (W, H)
    # Exactly on pixel edges and centres, on the map borders (0, 1), half a pixel beyond them
    # (-0.5/W, 1 + 0.5/W: the outermost centres' neighbours), and far outside.
    grid_units = torch.tensor([0.0, 0.5, 1.0, 3.5]).view(1, 1, 1, 1, 4, 1)
    for loc in (grid_units / per_level, torch.zeros(()), torch.ones(()), -0.5 / per_level,
                1 + 0.5 / per_level, torch.full((), -7.0), torch.full((), 9.0)):
        locations = loc.expand_as(locations).clone()
        locations[..., 1] = locations[..., 1].flip(-1)  # x and y at different grid positions
        out = multi_scale_deformable_sampling(value, shapes, locations, weights)
        ref = grid_sample_reference(value, shapes, locations, weights)
        assert (out - ref).abs().max() <= 1e-5
    assert multi_scale_deformable_sampling(value, shapes, torch.full_like(locations, 9.0), weights).abs().max() == 0


def test_chunking_over_queries_gives_the_same_result(monkeypatch):
    shapes = [(7, 5), (3, 4)]
    value, locations, weights = random_inputs(shapes, q=50)
    whole = multi_scale_deformable_sampling(value, shapes, locations, weights)
    # 2 * 4 * 2 * 3 * 4 = 192 corners per query: 7 queries per chunk, the last chunk partial.
    monkeypatch.setattr("segearth.modeling.deform_attn._CORNERS_PER_CHUNK", 7 * 192)
    chunked = multi_scale_deformable_sampling(value, shapes, locations, weights)
    assert torch.equal(whole, chunked)
    assert (chunked - grid_sample_reference(value, shapes, locations, weights)).abs().max() <= 1e-5


def test_gradients_equal_grid_sample():
    shapes = [(6, 9), (3, 5)]
    value, locations, weights = random_inputs(shapes, b=1, q=20, spread=(-0.1, 1.1))
    grads = []
    for fn in (multi_scale_deformable_sampling, grid_sample_reference):
        inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
        out = fn(inputs[0], shapes, inputs[1], inputs[2])
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append([t.grad for t in inputs])
    for fast, ref in zip(*grads, strict=True):
        assert (fast - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_bf16_computes_in_fp32_and_returns_bf16():
    shapes = [(16, 16), (8, 8), (4, 4)]
    value, locations, weights = (t.bfloat16() for t in random_inputs(shapes, q=64, spread=(0.0, 1.0)))
    exact = grid_sample_reference(value.float(), shapes, locations.float(), weights.float())

    def within_one_rounding(out):  # round to nearest: at most half a bf16 ulp (2^-8 relative)
        return bool(((out.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-5).all())

    out = multi_scale_deformable_sampling(value, shapes, locations, weights)
    assert out.dtype == torch.bfloat16
    assert within_one_rounding(out)
    # The bound is tight enough to catch a computation in bf16:
    assert not within_one_rounding(grid_sample_reference(value, shapes, locations, weights))


def test_non_finite_locations_read_zeros_instead_of_failing():
    shapes = [(4, 4)]
    value, locations, weights = random_inputs(shapes, q=3)
    locations[0, 0] = float("nan")
    locations[0, 1] = float("inf")
    locations[0, 2] = -float("inf")
    out = multi_scale_deformable_sampling(value, shapes, locations, weights)
    assert out[0].abs().max() == 0
    assert torch.isfinite(out).all() and out[1].abs().max() > 0


def test_pixel_decoder_samples_at_fp32_locations_under_bf16(monkeypatch):
    """The sampling locations of a bf16 decoder are the fp32 ones: fp32 pixel centres (bf16 rounds
    (x + 0.5) / 48) plus the offsets divided in fp32 (a bf16 sum near 1 is 2^-8 coarse)."""
    torch.manual_seed(0)
    cfg = PixelDecoderConfig(conv_dim=32, mask_dim=32, num_encoder_layers=1, num_heads=4, num_points=2)
    decoder = PixelDecoder(cfg, (8, 8, 8, 8))
    attn = decoder.transformer.encoder.layers[0].self_attn
    torch.nn.init.zeros_(attn.sampling_offsets.weight)
    torch.nn.init.constant_(attn.sampling_offsets.bias, 0.3)  # every sample 0.3 px right and down
    decoder = decoder.bfloat16()
    seen = []

    def spy(value, spatial_shapes, locations, weights):
        seen.append(locations)
        return multi_scale_deformable_sampling(value, spatial_shapes, locations, weights)

    monkeypatch.setattr("segearth.modeling.deform_attn.multi_scale_deformable_sampling", spy)
    sizes = [(96, 80), (48, 40), (24, 20), (12, 10)]  # res2..res5, not powers of two
    out = decoder(tuple(torch.randn(1, 8, h, w, dtype=torch.bfloat16) for h, w in sizes))
    assert out.mask_features.dtype == torch.bfloat16
    shapes = sizes[:0:-1]  # encoder levels: res5, res4, res3
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    offset = attn.sampling_offsets.bias[0].float() / wh  # [levels, 2], the bf16 0.3 divided in fp32
    centres = DeformableTransformer.reference_points(shapes, "cpu")
    expected = centres[:, :, None, :, None, :] + offset[None, None, None, :, None, :]
    assert seen[0].dtype == torch.float32
    assert torch.equal(seen[0], expected.expand_as(seen[0]))


@pytest.mark.parametrize("native", [False, True])
def test_pixel_decoder_convolves_bf16_natively_or_in_fp32(monkeypatch, native):
    """Where bf16 is emulated, reduced-precision CPU convolutions are a naive kernel (~150x slower): the
    bf16 decoder must hand every convolution fp32 tensors; where it is native (AMX, AVX512-BF16), bf16
    ones. Either way it returns bf16 within one rounding of fp32."""
    import segearth.modeling.conv as conv_module
    from segearth.options import cpu_has_native_bf16

    monkeypatch.setattr(conv_module, "_native_bf16", lambda: native)
    torch.manual_seed(0)
    cfg = PixelDecoderConfig(conv_dim=32, mask_dim=32, num_encoder_layers=1, num_heads=4, num_points=2)
    decoder = PixelDecoder(cfg, (8, 8, 8, 8)).bfloat16()
    features = tuple(torch.randn(1, 8, 32 // 2**i, 32 // 2**i, dtype=torch.bfloat16) for i in range(4))

    class ConvolutionDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                self.dtypes.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), ConvolutionDtypes() as spy:
        out = decoder(features)
    assert len(spy.dtypes) == 6 and set(spy.dtypes) == {torch.bfloat16 if native else torch.float32}
    assert out.mask_features.dtype == torch.bfloat16

    conv = decoder.layer_1[0]
    x = torch.randn(1, 32, 9, 7, dtype=torch.bfloat16)
    exact = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1)
    if native and not cpu_has_native_bf16():
        return  # the branch's dispatch is checked above; its numbers are those of this CPU's naive kernel
    with torch.no_grad():
        assert ((conv(x).float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()  # one rounding to bf16
