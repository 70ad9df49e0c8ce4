"""Training throughput: samples/s of forward + official loss + backward + AdamW step.

    python benchmarks/train.py                           # small config on CPU
    python benchmarks/train.py --preset released --device cuda --dtype bf16 --batch-size 2 \
        --gradient-checkpointing                         # released sizes on one GPU (+ peak memory)

Synthetic inputs (random images, a land-cover style question and answer); the official freezing
policy (Swin frozen) unless --train-all. Not run as a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from segearth.config import released_config, small_config
from segearth.modeling.segearth_r1 import SegEarthR1
from segearth.tokenizer import byte_level_tokenizer
from segearth.train.collate import Collator, Example
from segearth.train.modelsetup import TrainingModule


def released_tokenizer_stub():
    """Byte-level ids are enough for timing; the vocabulary size only changes the LM head."""
    return byte_level_tokenizer()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("small", "released"), default="small")
    p.add_argument("--image-size", type=int, default=None, help="small preset only (default 256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast, fp32 master weights")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-points", type=int, default=None, help="loss points per mask (official 12544)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--train-all", action="store_true", help="also train the Swin encoder")
    args = p.parse_args()

    cfg = small_config(args.image_size or 256) if args.preset == "small" else released_config()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with torch.device(device):
        model = SegEarthR1(cfg)
    if not args.train_all:
        model.vision_encoder.requires_grad_(False)
    if args.gradient_checkpointing:
        model.llm.phi.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    module = TrainingModule(model, args.num_points).train()
    optimizer = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
    s = cfg.image_size
    rng = np.random.default_rng(0)
    examples = [
        Example(i, str(i), rng.integers(0, 255, (s, s, 3), dtype=np.uint8), (rng.random((s, s)) > 0.5).astype(np.uint8),
                "Which areas could flood after heavy rain?", "The low-lying fields near the river.", "reasoning")
        for i in range(args.batch_size)
    ]
    batch = Collator(released_tokenizer_stub())(examples).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> float:
        with autocast:
            out = module(batch.images, batch.input_ids, batch.attention_mask, batch.refer_ids, batch.answer_ids,
                         labels=batch.labels, masks=batch.masks)
        out["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out["total"])

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    trainable = sum(q.numel() for q in module.parameters() if q.requires_grad)
    print(f"{args.preset} image {s} batch {args.batch_size} {args.dtype} on {device} "
          f"(torch threads {torch.get_num_threads()}), trainable {trainable:,} params")
    print(f"{args.steps * args.batch_size / elapsed:.2f} samples/s, {elapsed / args.steps * 1000:.0f} ms/step")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (single process, no ZeRO)")


if __name__ == "__main__":
    main()
