"""Scale-out throughput: one process vs a local Ray with 1 and 2 workers, and a paper sizing of a big job.

Copies real rasters (../shared/data/geotiff and the example scene) into a temporary folder and asks the
built-in segearth-nano (float32, scene mode) the same questions about each, four ways, each in its own
process: the single-process ``segearth predict`` path (``batch.run_job`` in a loop) with all cores and
with 1 thread, and ``--ray local`` with 1 and 2 workers (1 CPU each). Start-up (Ray, model load) and the
prediction phase are timed apart. The 1-thread run also times the model calls alone, which gives the
split used by the sizing:

    per scene on a GPU = model time / --gpu-speedup + the rest (reading, stretching, writing the COG,
    polygons and preview: CPU work that a GPU does not speed up, taken as measured here)
    job time = start-up + scenes × per scene / --gpus

    python benchmarks/scale_out.py [--scenes 8] [--questions 2] [--gpus 8] [--gpu-speedup 10] [--target 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT.parent / "shared" / "data" / "geotiff").glob("*.tif")) + sorted(
    (ROOT / "examples").glob("*.jpg"))
QUESTIONS = ["where could a boat travel?", "the buildings", "the roads", "the vegetation"]
LOAD = dict(task="reasoning", device="cpu", dtype="float32", quantize="none")


def child_single(folder: Path, out: Path, questions: list[str], threads: int) -> dict:
    import torch

    from segearth.api import load_predictor
    from segearth.batch import resolve_jobs, run_job
    from segearth.predict import PredictOptions

    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    predictor, name = load_predictor(None, **LOAD)
    start = time.perf_counter() - t
    model_s = 0.0
    for method in ("set_image", "predict"):  # time the model calls inside the unchanged pipeline
        original = getattr(predictor, method)

        def timed(*args, _original=original, **kwargs):
            nonlocal model_s
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                model_s += time.perf_counter() - t0

        setattr(predictor, method, timed)
    opts = PredictOptions(out_dir=out)
    jobs, _ = resolve_jobs(str(folder), questions, out)
    t = time.perf_counter()
    for job in jobs:
        run_job(predictor, name, job, opts)
    return {"start_s": start, "predict_s": time.perf_counter() - t, "model_s": model_s, "scenes": len(jobs)}


def child_ray(folder: Path, out: Path, questions: list[str], workers: int) -> dict:
    import ray
    from rich.console import Console

    from segearth.api import display_name
    from segearth.batch import BatchReport, resolve_jobs
    from segearth.predict import PredictOptions
    from segearth.scale import DoneLog, ScaleOptions, _connect, _drain, _pending, _start_workers

    quiet = Console(quiet=True)
    scale = ScaleOptions("local", workers)
    opts = PredictOptions(out_dir=out)
    jobs, _ = resolve_jobs(str(folder), questions, out)
    report, log = BatchReport(), DoneLog(out)
    todo = _pending(jobs, opts, display_name(None), log, report)
    t = time.perf_counter()
    _connect(ray, scale)
    ray_s = time.perf_counter() - t
    actors = _start_workers(ray, scale, None, LOAD, opts, len(todo), quiet)
    start = time.perf_counter() - t
    t = time.perf_counter()
    _drain(ray, actors, todo, log, report, quiet)
    predict = time.perf_counter() - t
    ray.shutdown()
    assert not report.failed, report.failed
    return {"ray_init_s": ray_s, "start_s": start, "predict_s": predict, "scenes": len(jobs)}


def run_child(kind: str, folder: Path, questions: int, workers: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"scale-out-{kind}-"))
    # A 1-thread run gets the environment Ray gives a 1-CPU worker (OpenMP, hence numpy's BLAS, on 1 thread).
    env = dict(os.environ, OMP_NUM_THREADS="1") if kind == "single" and workers == 1 else None
    try:
        cmd = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--out", str(out),
               "--questions", str(questions), "--workers", str(workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--questions", type=int, default=2, choices=range(1, len(QUESTIONS) + 1))
    ap.add_argument("--gpus", type=int, default=8, help="sizing: GPU workers, one per GPU")
    ap.add_argument("--gpu-speedup", type=float, default=10.0, help="sizing: model calls on a GPU vs this CPU")
    ap.add_argument("--target", type=int, default=10_000, help="sizing: scenes in the job")
    ap.add_argument("--child", choices=["single", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)  # single: torch threads (0: all)
    args = ap.parse_args()
    questions = QUESTIONS[: args.questions]
    if args.child == "single":
        print(json.dumps(child_single(args.folder, args.out, questions, args.workers)))
        return
    if args.child == "ray":
        print(json.dumps(child_ray(args.folder, args.out, questions, args.workers)))
        return

    sources = [s for s in SOURCES if "complex" not in s.name][: args.scenes]  # complex SAR is not an image
    if len(sources) < args.scenes:
        raise SystemExit(f"only {len(sources)} rasters found under ../shared/data/geotiff and examples/")
    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="scale-out-scenes-"))
    try:
        for s in sources:
            shutil.copy(s, folder / s.name)
        # The plain single process uses every core; with 1 thread it matches one Ray worker (1 CPU).
        runs = {"single process": run_child("single", folder, args.questions, 0),
                "single, 1 thread": run_child("single", folder, args.questions, 1)}
        for n in (1, 2):
            runs[f"Ray, {n} worker(s)"] = run_child("ray", folder, args.questions, n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    print(f"{len(sources)} scenes x {len(questions)} questions, segearth-nano float32 scene mode; CPU: {cpu}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {load_before:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after (other processes share these cores)")
    print(f"{'run':<20} {'start-up s':>10} {'predict s':>10} {'s/scene':>8} {'scenes/min':>10}")
    for name, r in runs.items():
        per = r["predict_s"] / r["scenes"]
        print(f"{name:<20} {r['start_s']:>10.1f} {r['predict_s']:>10.1f} {per:>8.2f} {60 / per:>10.1f}")

    single = runs["single, 1 thread"]  # one core per worker, as assumed below; robust on a busy machine
    per_scene = single["predict_s"] / single["scenes"]
    model = single["model_s"] / single["scenes"]
    rest = per_scene - model
    gpu_scene = model / args.gpu_speedup + rest
    start = runs["Ray, 2 worker(s)"]["start_s"]
    hours = (start + args.target * gpu_scene / args.gpus) / 3600
    print(f"\nsizing of {args.target} scenes x {len(questions)} questions on {args.gpus} GPUs (one worker each):")
    print(f"  measured per scene here: {per_scene:.2f} s = model {model:.2f} s + reading/writing {rest:.2f} s")
    print(f"  assumed on a GPU node: model {args.gpu_speedup:g}x faster, reading/writing as measured here "
          f"(one core per worker), shared filesystem not the bottleneck")
    print(f"  per scene per worker {gpu_scene:.2f} s; start-up {start:.0f} s (Ray + model load, measured)")
    print(f"  => {hours:.2f} h wall, {hours * args.gpus:.1f} GPU-hours; reading/writing is "
          f"{100 * rest / gpu_scene:.0f}% of a GPU worker's time")


if __name__ == "__main__":
    main()
