"""The released SegEarth-R1 (Swin-B + Phi-1.5, 1024² input, random weights) on CPU, the way a user runs
it: a bfloat16 checkpoint on disk, loaded by segearth's loader, questions through the Predictor.

Each mode runs in its own process (its peak RSS is its own): float32, bfloat16, and int8 (float32 with
int8 Linear layers, ``--quantize int8``). Per mode: load time and the loader's peak RSS above the
process's baseline, the first question (image + question), a later question on the cached image
(median of 3), 8 questions about a new image (image once, questions batched through the LLM), the
per-stage times of the first question, the process's peak RSS, and the IoU of the first answer's mask
with float32's. The image is the example Dubai scene; the tokenizer is nano's WordPiece (its prompt is 91
ids, the official Phi template about 110), so the LLM does the work of a real question.

    python benchmarks/released.py [--modes float32 bfloat16 int8] [--threads 2] [--dir /tmp] [--code OLD]

A "before" column: ``git worktree add /tmp/before <commit>`` and ``--code /tmp/before`` (that checkout's
segearth runs the same steps; int8 is skipped where it does not exist). Ratios are against the first column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import peak_rss, write_checkpoints  # the same streamed random checkpoint and RSS probe as load.py

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "dubai_tile6_part001.jpg"
QUESTIONS = [
    "where could a boat travel?", "which surfaces stay coolest in summer?", "the buildings", "the main road",
    "where could a new house be built?", "which areas would flood first?", "the vegetation", "the parking lots",
]
STAGES = ("vision_encoder", "connector", "pixel_decoder", "llm", "d_projector", "mask_decoder")
LABELS = {"vision_encoder": "Swin-B", "connector": "connector", "pixel_decoder": "pixel decoder",
          "deformable sampling": "  of which deformable sampling", "llm": "Phi-1.5 LLM",
          "d_projector": "D-Projector", "mask_decoder": "mask decoder", "other": "other (letterbox, glue)"}
MODES = {"float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "int8": ("float32", "int8")}
GB = 1e9


class StageTimer:
    """Wall time per component (forward hooks) and of the deformable-sampling core."""

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

        deform_attn.multi_scale_deformable_sampling = timed_core  # looked up at call time by MSDeformAttn

    def _add(self, name: str, start: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def open_predictor(folder: str, dtype: str, quantize: str):
    """``(predictor, set_image, predict_batch)``; also for a checkout from before the Predictor took any
    image and batched questions (``--code``: the canvas is letterboxed here, questions asked one by one)."""
    import segearth

    # Checked by file: the editable install's finder would serve this checkout's api.py to an older one.
    if not (Path(segearth.__file__).parent / "api.py").exists():  # an older checkout
        import torch

        from segearth.checkpoint import load_model_and_tokenizer
        from segearth.geo.letterbox import letterbox
        from segearth.predictor import Predictor

        if quantize != "none":
            raise SystemExit(f"--quantize {quantize} is not in this checkout")  # the parent skips the column
        predictor = Predictor(*load_model_and_tokenizer(folder, dtype=getattr(torch, dtype)))
        return (predictor, lambda image: predictor.set_image(letterbox(image, predictor.image_size)[0]),
                lambda questions: [predictor.predict(q) for q in questions])
    from segearth.api import load_predictor

    predictor, _ = load_predictor(folder, dtype=dtype, quantize=quantize)
    return predictor, predictor.set_image, predictor.predict_batch


def child(mode: str, folder: str, mask_path: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    dtype, quantize = MODES[mode]
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    baseline = peak_rss()
    start = time.perf_counter()
    predictor, set_image, predict_batch = open_predictor(folder, dtype, quantize)
    load_s, load_peak = time.perf_counter() - start, peak_rss()
    model = predictor.model
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    timer = StageTimer(model)

    start = time.perf_counter()
    set_image(image)
    first = predict_batch(QUESTIONS[:1])[0]
    first_s = time.perf_counter() - start
    stages = dict(timer.times)
    stages["other"] = first_s - sum(stages.get(s, 0.0) for s in STAGES)
    np.save(mask_path, (first.canvas_logits(model.cfg.image_size) > 0).numpy())  # same grid in every checkout

    later = []
    for q in QUESTIONS[1:4]:
        start = time.perf_counter()
        predict_batch([q])
        later.append(time.perf_counter() - start)

    start = time.perf_counter()
    set_image(np.ascontiguousarray(image[::-1]))  # a new image: nothing cached
    predict_batch(QUESTIONS)
    eight_s = time.perf_counter() - start
    return {"mode": mode, "threads": torch.get_num_threads(), "load_s": load_s,
            "load_extra_gb": (load_peak - baseline) / GB, "param_gb": param_bytes / GB, "first_s": first_s,
            "later_s": statistics.median(later), "eight_s": eight_s, "stages": stages, "peak_gb": peak_rss() / GB}


def mask_iou(a_path: Path, b_path: Path) -> float:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def print_table(rows: list[dict]) -> None:
    base = rows[0]

    def cell(r: dict, key: str) -> str:
        """The value with its ratio to the first column's."""
        value, ref = ((row["stages"].get(key, 0.0) if key in LABELS else row[key]) for row in (r, base))
        return f"{value:.2f}" + (f" ({value / ref:.2f}x)" if r is not base and ref > 0 else "")

    print(f"| released config, {base['threads']} threads | " + " | ".join(r["mode"] for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key, label in (("load_s", "load (bf16 checkpoint), s"),
                       ("load_extra_gb", "loading peak RSS above baseline, GB"),
                       ("param_gb", "float parameter bytes, GB"), ("first_s", "first question (image + question), s"),
                       ("later_s", "later question, cached image, s"), ("eight_s", "8 questions, new image, s")):
        print(f"| {label} | " + " | ".join(cell(r, key) for r in rows) + " |")
    for key, label in LABELS.items():
        print(f"| first question: {label}, s | " + " | ".join(cell(r, key) for r in rows) + " |")
    print("| peak RSS of the process, GB | " + " | ".join(cell(r, "peak_gb") for r in rows) + " |")
    print(f"| mask IoU of the first answer with {base['mode']} | " + " | ".join(f"{r['iou']:.4f}" for r in rows) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the checkpoint (default: temp).")
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="Also run the modes against the segearth package of this checkout (e.g. a git "
                             "worktree of an older commit: a 'before' column). Repeatable.")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FOLDER", "MASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(*args.child)))
        return

    from segearth.config import released_config

    root = Path(tempfile.mkdtemp(prefix="segearth-released-", dir=args.dir))
    try:
        numel = write_checkpoints(released_config(), root, dtypes=("bfloat16",))
        folder = root / "bfloat16"
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(ROOT / "segearth" / "weights" / "nano" / name, folder / name)
        print(f"released config, {numel:,} parameters, bfloat16 checkpoint; image {IMAGE.name}", flush=True)
        rows = []
        modes = ["float32", *[m for m in args.modes if m != "float32"]]
        for code in [*args.code, ROOT]:  # the first column (an older checkout's float32, if any) is the reference
            commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip() or code.name
            for mode in modes:
                mask = root / f"{commit}-{mode}.npy"
                cmd = [sys.executable, __file__, "--child", mode, str(folder), str(mask),
                       "--threads", str(args.threads)]
                run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)})
                if run.returncode != 0:
                    print(f"{commit} {mode}: skipped ({run.stderr.strip().splitlines()[-1]})", flush=True)
                    continue
                row = json.loads(run.stdout.strip().splitlines()[-1])
                rows.append({**row, "mode": f"{commit} {mode}", "mask": mask})
                rows[-1]["iou"] = mask_iou(rows[0]["mask"], mask)
                print(f"{commit} {mode}: first question {rows[-1]['first_s']:.1f} s", flush=True)
        print_table(rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
