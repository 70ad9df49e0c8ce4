"""segearth-nano on CPU: load time, latency of the first question on an image (image encoding
included) and of later questions (image cached), peak RSS — on the example scene.

    python benchmarks/nano.py [--image examples/dubai_tile6_part001.jpg] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

QUESTIONS = ["where could a boat travel?", "where do people live and work?", "the roads",
             "where could a new house be built without demolishing anything?", "which areas are covered by plants?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path,
                        default=Path(__file__).parents[1] / "examples" / "dubai_tile6_part001.jpg")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from segearth.checkpoint import load_model_and_tokenizer
    from segearth.data.io import read_rgb
    from segearth.geo.letterbox import letterbox
    from segearth.predictor import Predictor
    from segearth.weights import builtin_model_path

    t = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(builtin_model_path())
    predictor = Predictor(model, tokenizer)
    load_s = time.perf_counter() - t
    image = read_rgb(args.image)
    first, later = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        canvas, _ = letterbox(image, model.cfg.image_size)
        predictor.set_image(canvas)
        predictor.predict(QUESTIONS[0])
        first.append(time.perf_counter() - t)
        for q in QUESTIONS[1:]:
            t = time.perf_counter()
            predictor.predict(q)
            later.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"segearth-nano, {model.cfg.image_size}² input, torch threads {torch.get_num_threads()}, "
          f"image {args.image.name}")
    print("| measure | value |\n|---|---|")
    print(f"| model load | {load_s:.2f} s |")
    print(f"| first question (letterbox + image encoding + question), median of {args.repeats} "
          f"| {statistics.median(first) * 1000:.0f} ms |")
    print(f"| later question (image cached), median of {len(later)} | {statistics.median(later) * 1000:.0f} ms |")
    print(f"| first / later | {statistics.median(first) / statistics.median(later):.1f}x |")
    print(f"| peak RSS | {rss:.0f} MiB |")


if __name__ == "__main__":
    main()
