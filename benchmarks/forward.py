"""One full-size SegEarth-R1 forward (released config, random weights, 1024x1024 input, one question)
on CPU in fp32 and bf16: wall time and peak RSS, side by side.

Each dtype runs in its own process so that peak RSS is its own. Usage:

    python benchmarks/forward.py [--dtypes float32 bfloat16] [--threads N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

# Prompt shape of the real template: ~110 text ids around <image> and <refer>, ~20 description ids.
TEXT_BEFORE, TEXT_BETWEEN, TEXT_AFTER, DESCRIPTION = 60, 20, 30, 20


def random_released_model(dtype):
    """The released architecture with N(0, 0.02) weights (norms at 1/0), built in ``dtype`` without a copy."""
    import torch

    from segearth import SegEarthR1, released_config

    with torch.device("meta"):
        model = SegEarthR1(released_config()).to(dtype)
    model = model.to_empty(device="cpu")
    model.materialize_buffers()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def released_inputs(model):
    """``(input_ids, refer_ids, images)`` of one question in the real template's shape, random image."""
    import torch

    from segearth.modeling.prompt import IMAGE_TOKEN, REFER_TOKEN

    ids = torch.tensor([list(range(100, 100 + TEXT_BEFORE)) + [IMAGE_TOKEN] + list(range(200, 200 + TEXT_BETWEEN))
                        + [REFER_TOKEN] + list(range(300, 300 + TEXT_AFTER))])
    refer = [torch.arange(400, 400 + DESCRIPTION)]
    gen = torch.Generator().manual_seed(1)
    size = model.cfg.image_size
    return ids, refer, model.normalize(torch.rand(1, 3, size, size, generator=gen) * 255)


def run_one(dtype_name: str, repeats: int) -> dict:
    import torch

    t0 = time.perf_counter()
    model = random_released_model(getattr(torch, dtype_name))
    build_s = time.perf_counter() - t0
    ids, refer, images = released_inputs(model)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            out = model(ids, refer, images=images)
            mask = model.upsample_logits(out.mask_logits) > 0
            times.append(time.perf_counter() - t)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
        "build_s": round(build_s, 1),
        "first_forward_s": round(times[0], 2),
        "best_forward_s": round(min(times), 2),
        "peak_rss_gib": round(rss_gib, 2),
        "mask_shape": list(mask.shape),
        "sequence_length": int(out.sequence.lengths[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.child, args.repeats)))
        return
    rows = []
    keys = ["dtype", "threads", "build_s", "first_forward_s", "best_forward_s", "peak_rss_gib", "sequence_length"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys), flush=True)
    for dtype in args.dtypes:
        cmd = [sys.executable, __file__, "--child", dtype,
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print("| " + " | ".join(str(rows[-1][k]) for k in keys) + " |", flush=True)
    if len(rows) == 2:
        print(f"\n{rows[1]['dtype']} / {rows[0]['dtype']}: "
              f"time x{rows[1]['best_forward_s'] / rows[0]['best_forward_s']:.2f}, "
              f"peak RSS x{rows[1]['peak_rss_gib'] / rows[0]['peak_rss_gib']:.2f}")


if __name__ == "__main__":
    main()
