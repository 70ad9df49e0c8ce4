"""Prediction speed and memory, side by side in one run.

(a) 1 vs 8 questions about one image, with the Predictor's cache (image features + prompt-prefix
    key/value cache) versus the full forward pass per question.
(b) a synthetic 20 000 x 20 000 GeoTIFF (generated here, deleted afterwards) in scene and tiles mode:
    wall time and peak RSS of each mode, each in its own process.

    python benchmarks/predict.py [--config small|released] [--size 20000] [--tile-size 1024] [--skip-raster]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "where could a boat travel?", "which surfaces stay coolest in summer?", "the buildings", "the main road",
    "where could a new house be built?", "which areas would flood first?", "the vegetation", "the parking lots",
]


def build_predictor(config: str):
    import torch

    from segearth import SegEarthR1, released_config, small_config
    from segearth.predictor import Predictor
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    cfg = small_config() if config == "small" else released_config(vocab_size=259)
    return Predictor(SegEarthR1(cfg).eval(), byte_level_tokenizer())


def bench_questions(config: str) -> list[dict]:
    import numpy as np

    predictor = build_predictor(config)
    size = predictor.image_size
    canvas = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    rows = []
    for n in (1, 8):
        t = time.perf_counter()
        predictor.set_image(canvas)
        for q in QUESTIONS[:n]:
            predictor.predict(q)
        cached = time.perf_counter() - t
        t = time.perf_counter()
        for q in QUESTIONS[:n]:
            predictor.set_image(canvas)  # uncached: every question pays for the image again
            predictor.predict_uncached(q)
        uncached = time.perf_counter() - t
        rows.append({"questions": n, "cached_s": round(cached, 3), "uncached_s": round(uncached, 3),
                     "speedup": round(uncached / cached, 2)})
    return rows


def make_raster(path: Path, size: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32631",
                   transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="YES")
    block = 2048
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                yy, xx = np.mgrid[r : r + h, c : c + w]
                base = (np.sin(yy / 700.0) + np.cos(xx / 900.0)) * 60 + 120
                data = np.stack([base, base * 0.8 + 20, 255 - base]).clip(0, 255).astype(np.uint8)
                dst.write(data, window=Window(c, r, w, h))


def bench_raster_child(config: str, raster: str, mode: str, tile_size: int, out: str) -> dict:
    from segearth.predict import PredictOptions, predict_raster

    predictor = build_predictor(config)
    opts = PredictOptions(out_dir=Path(out), mode=mode, tile_size=tile_size, overlap=128, overwrite=True)
    t = time.perf_counter()
    result = predict_raster(predictor, raster, ["the water"], opts, config)
    seconds = time.perf_counter() - t
    return {"mode": mode, "seconds": round(seconds, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "regions": result.results[0].polygons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["small", "released"], default="small")
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--skip-raster", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        raster, mode, tile, out = args.child
        print(json.dumps(bench_raster_child(args.config, raster, mode, int(tile), out)))
        return

    print(f"(a) questions on one image, {args.config} config, CPU")
    print("| questions | cached s | uncached s | uncached / cached |\n|---|---|---|---|")
    for r in bench_questions(args.config):
        print(f"| {r['questions']} | {r['cached_s']} | {r['uncached_s']} | {r['speedup']} |")
    if args.skip_raster:
        return
    with tempfile.TemporaryDirectory() as tmp:
        raster = Path(tmp) / "synthetic.tif"
        t = time.perf_counter()
        make_raster(raster, args.size)
        print(f"\n(b) synthetic {args.size} x {args.size} x 3 uint8 GeoTIFF written in {time.perf_counter() - t:.0f} s")
        print("| mode | seconds | peak RSS GiB | regions |\n|---|---|---|---|")
        for mode in ("scene", "tiles"):
            cmd = [sys.executable, __file__, "--config", args.config, "--child", str(raster), mode,
                   str(args.tile_size), str(Path(tmp) / mode)]
            Path(tmp, mode).mkdir()
            stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(stdout.strip().splitlines()[-1])
            print(f"| {row['mode']} | {row['seconds']} | {row['peak_rss_gib']} | {row['regions']} |")


if __name__ == "__main__":
    main()
