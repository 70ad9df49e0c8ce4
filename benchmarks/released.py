"""One-question forward of the released SegEarth-R1 (random weights, 1024² input) on CPU, per stage,
in fp32 and bf16.

Stages are timed with forward hooks on the model's own components during ``model(...)``, so the
total is the real forward (the "other" row is prompt splicing, embeddings and glue). The pixel
decoder's deformable-sampling share is timed inside it. Each dtype runs in its own process so its
peak RSS is its own. Usage:

    python benchmarks/released.py [--dtypes float32 bfloat16] [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from forward import random_released_model, released_inputs  # the same model and inputs as forward.py

STAGES = ("vision_encoder", "connector", "pixel_decoder", "llm", "d_projector", "mask_decoder")


class StageTimer:
    """Wall time per component (forward hooks) and of the deformable-sampling core, per forward."""

    def __init__(self, model) -> None:
        import segearth.modeling.deform_attn as deform_attn

        self.times: dict[str, float] = {}
        self._start: dict[str, float] = {}
        for name in STAGES:
            module = getattr(model, name)
            module.register_forward_pre_hook(lambda m, a, name=name: self._start.__setitem__(name, time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, name=name: self._add(name, self._start[name]))
        core = deform_attn.multi_scale_deformable_sampling

        def timed_core(*args):
            start = time.perf_counter()
            out = core(*args)
            self._add("deformable sampling", start)
            return out

        deform_attn.multi_scale_deformable_sampling = timed_core

    def _add(self, name: str, start: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def run_one(dtype_name: str, repeats: int) -> dict:
    import torch

    t0 = time.perf_counter()
    model = random_released_model(getattr(torch, dtype_name))
    build_s = time.perf_counter() - t0
    timer = StageTimer(model)
    ids, refer, images = released_inputs(model)
    runs = []
    with torch.no_grad():
        for _ in range(repeats):
            timer.times = {}
            start = time.perf_counter()
            out = model(ids, refer, images=images)
            model.upsample_logits(out.mask_logits)
            runs.append({"total": time.perf_counter() - start, **timer.times})
    best = min(runs, key=lambda r: r["total"])
    best["other"] = best["total"] - sum(best[s] for s in STAGES)
    return {
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
        "build_s": build_s,
        "forwards_s": [r["total"] for r in runs],
        "stages": best,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "sequence_length": int(out.sequence.lengths[0]),
    }


def print_table(rows: list[dict]) -> None:
    names = ["vision_encoder", "connector", "pixel_decoder", "deformable sampling", "llm", "d_projector",
             "mask_decoder", "other", "total"]
    labels = {"vision_encoder": "Swin-B", "pixel_decoder": "pixel decoder",
              "deformable sampling": "  of which deformable sampling", "llm": "Phi-1.5 LLM",
              "d_projector": "D-Projector", "mask_decoder": "mask decoder", "total": "forward (best)"}
    print("| stage (s) | " + " | ".join(r["dtype"] for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for name in names:
        print(f"| {labels.get(name, name)} | " + " | ".join(f"{r['stages'][name]:.2f}" for r in rows) + " |")
    for key, fmt in (("forwards_s", "{}"), ("peak_rss_gib", "{:.2f}"), ("build_s", "{:.1f}"),
                     ("sequence_length", "{}"), ("threads", "{}")):
        values = [fmt.format([round(v, 2) for v in r[key]] if key == "forwards_s" else r[key]) for r in rows]
        print(f"| {key} | " + " | ".join(values) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.child, args.repeats)))
        return
    rows = []
    for dtype in args.dtypes:
        cmd = [sys.executable, __file__, "--child", dtype,
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    print_table(rows)


if __name__ == "__main__":
    main()
