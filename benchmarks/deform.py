"""Deformable-attention sampling at the released size: the grid_sample form the official code
falls back to (the reference) against segearth's gather core, side by side on CPU.

Shapes come from ``released_config()``: the pixel decoder's encoder attends from every token of
res5, res4 and res3 (strides 32, 16, 8 of the 1024² input) to the same three levels, with its
heads, points and width. Locations are the tokens' pixel centres plus offsets of a few pixels, as
trained offsets are (``--uniform``: anywhere on the maps, the cache-unfriendly worst case). Usage:

    python benchmarks/deform.py [--threads 2] [--repeats 5] [--reference-repeats 3] [--uniform]
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from segearth.config import released_config
from segearth.modeling.deform_attn import multi_scale_deformable_sampling
from segearth.modeling.pixel_decoder import NUM_ENCODER_LEVELS, DeformableTransformer


def grid_sample_reference(value, spatial_shapes, sampling_locations, attention_weights):
    """The official PyTorch fallback, grid_sample per level (same as in tests/test_deform_attn.py)."""
    b, _, heads, head_dim = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * heads, head_dim, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * weights).sum(-1).view(b, heads * head_dim, q)
    return out.transpose(1, 2)


def released_inputs(dtype: torch.dtype, uniform: bool = False, seed: int = 0):
    """(value, shapes, locations, weights) of one encoder layer of the released pixel decoder."""
    cfg = released_config()
    pd = cfg.pixel_decoder
    strides = [cfg.vision.patch_size * 2**i for i in range(1, 1 + NUM_ENCODER_LEVELS)][::-1]  # 32, 16, 8
    shapes = [(cfg.image_size // s, cfg.image_size // s) for s in strides]
    tokens = sum(h * w for h, w in shapes)
    heads, points, levels = pd.num_heads, pd.num_points, len(shapes)
    gen = torch.Generator().manual_seed(seed)
    value = torch.randn(1, tokens, heads, pd.conv_dim // heads, generator=gen)
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    offsets = torch.randn(1, tokens, heads, levels, points, 2, generator=gen) * 2.0 / wh[:, None, :]
    locations = DeformableTransformer.reference_points(shapes, "cpu")[:, :, None, :, None, :] + offsets
    if uniform:
        locations = torch.rand(locations.shape, generator=gen)
    weights = torch.randn(1, tokens, heads, levels * points, generator=gen).softmax(-1)
    weights = weights.view(1, tokens, heads, levels, points)
    return value.to(dtype), shapes, locations.to(dtype), weights.to(dtype)


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes held by tensor storages created inside the block (inputs excluded)."""

    def __init__(self, *inputs: torch.Tensor) -> None:
        super().__init__()
        self.seen = {id(t.untyped_storage()) for t in inputs}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        # Storages keep their Python object while alive, so a finaliser sees the real free.
        key = id(storage)
        if key in self.seen:
            return
        self.seen.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes


def timed(fn, inputs, repeats: int) -> list[float]:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - start)
    return times


def peak_mib(fn, inputs) -> float:
    value, _, locations, weights = inputs
    with torch.no_grad(), PeakTensorMemory(value, locations, weights) as tracker:
        fn(*inputs)
    return tracker.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--uniform", action="store_true", help="locations uniform over the maps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs = released_inputs(torch.float32, args.uniform)
    value, shapes, locations, _ = inputs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; levels {shapes}, "
          f"{locations.shape[1]} queries x {locations.shape[2]} heads x {locations.shape[3]} levels x "
          f"{locations.shape[4]} points, head dim {value.shape[-1]} (fp32), "
          f"{'uniform' if args.uniform else 'trained-like'} locations")
    max_diff = (multi_scale_deformable_sampling(*inputs) - grid_sample_reference(*inputs)).abs().max().item()
    rows = []
    for name, fn, repeats in (("grid_sample reference", grid_sample_reference, args.reference_repeats),
                              ("gather core", multi_scale_deformable_sampling, args.repeats)):
        times = timed(fn, inputs, repeats)
        rows.append((name, min(times), statistics.median(times), peak_mib(fn, inputs)))
    print(f"{'':24}{'best s':>9}{'median s':>10}{'peak extra MiB':>16}")
    for name, best, median, peak in rows:
        print(f"{name:24}{best:9.3f}{median:10.3f}{peak:16.1f}")
    print(f"speed-up (best / best): {rows[0][1] / rows[1][1]:.1f}x; max abs diff {max_diff:.2e}")
    bf16 = released_inputs(torch.bfloat16, args.uniform)
    bf16_best = min(timed(multi_scale_deformable_sampling, bf16, args.repeats))
    print(f"gather core, bf16 inputs (computes in fp32): best {bf16_best:.3f} s")


if __name__ == "__main__":
    main()
