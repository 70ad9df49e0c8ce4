"""int8 dynamic quantisation (``--quantize int8``) against float32, side by side in one run: per-question
latency with the image cached, and the agreement of the masks (IoU) on real scenes.

    python benchmarks/quantize.py [--model nano] [--threads 2] [IMAGE ...]

Default images: the example Dubai scene and real GeoTIFFs of ../shared/data (where present).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "geotiff"
DEFAULT_IMAGES = [ROOT / "examples" / "dubai_tile6_part001.jpg", SHARED / "naip_rgbn_2019.tif",
                  SHARED / "spacenet_rgb_uint8.tif"]
QUESTIONS = ["where could a boat travel?", "the buildings", "the roads", "which areas are covered by plants?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--model", default=None, help="built-in name, folder or hub id (default: nano)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from segearth.api import load_predictor
    from segearth.geo.read import read_overview

    torch.set_num_threads(args.threads)
    images = [p for p in (args.images or DEFAULT_IMAGES) if p.exists()]
    fp32, name = load_predictor(args.model, dtype="float32")
    int8, _ = load_predictor(args.model, quantize="int8")
    print(f"model {name}, {args.threads} threads, {len(images)} images x {len(QUESTIONS)} questions")
    times: dict[str, list[float]] = {"float32": [], "int8": []}
    ious = []
    for path in images:
        image = read_overview(path, fp32.image_size).image
        masks = {}
        for label, predictor in (("float32", fp32), ("int8", int8)):
            predictor.set_image(image)
            predictor.predict(QUESTIONS[0])  # the first question also builds the prompt cache
            out = []
            for q in QUESTIONS:
                start = time.perf_counter()
                out.append(predictor.predict(q).mask)
                times[label].append(time.perf_counter() - start)
            masks[label] = out
        for a, b in zip(masks["float32"], masks["int8"], strict=True):
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    f, i = statistics.median(times["float32"]), statistics.median(times["int8"])
    print(f"{'':10s} {'per question (cached image), median':>36s}")
    print(f"{'float32':10s} {f * 1000:33.1f} ms")
    print(f"{'int8':10s} {i * 1000:33.1f} ms   ({f / i:.2f}x)")
    print(f"mask IoU int8 vs float32: mean {np.mean(ious):.3f}, min {np.min(ious):.3f} over {len(ious)} answers")


if __name__ == "__main__":
    main()
