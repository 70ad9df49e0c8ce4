"""Checkpoint loading of the released-size model (Swin-B + Phi-1.5, 1.6 B parameters): wall time and
peak RSS, for float32 and bfloat16 checkpoints loaded as float32 and bfloat16, by the current loader
and by the previous one (kept here only: every tensor read through a safetensors memory map into a
dict, a float32 model, a copy into it, then a cast).

    python benchmarks/load.py [--dir /tmp] [--keep] [--only new]

Writes a float32 and a bfloat16 checkpoint of random weights (about 10 GB; streamed to disk, one
tensor in memory at a time), then loads each case in a fresh subprocess. "extra / params" is the
peak RSS above the subprocess's baseline (Python, torch and segearth imported), divided by the bytes
of the parameters in the target dtype; the target is <= 1.15. A case is skipped when the machine
does not have the memory it would need.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [("float32", "float32"), ("bfloat16", "bfloat16"), ("float32", "bfloat16"), ("bfloat16", "float32")]
GB = 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the checkpoints (default: temp).")
    parser.add_argument("--keep", action="store_true", help="Keep the written checkpoints.")
    parser.add_argument("--only", choices=("new", "old"), default=None, help="Run only one loader.")
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    import torch

    from segearth.config import released_config

    root = Path(tempfile.mkdtemp(prefix="segearth-load-", dir=args.dir))
    try:
        cfg = released_config()
        numel = write_checkpoints(cfg, root)
        methods = [args.only] if args.only else ["old", "new"]
        print(f"released config, {numel:,} parameters; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print("| checkpoint | target | loader | load s | baseline GB | peak GB | extra GB | params GB "
              "| extra / params |")
        print("|---|---|---|---|---|---|---|---|---|")
        for file_dtype, target in CASES:
            param_bytes = numel * getattr(torch, target).itemsize
            for method in methods:
                need = _needed_bytes(method, numel, file_dtype, target)
                if need + 2 * GB > available_bytes():  # leave room for whatever else runs here
                    print(f"| {file_dtype} | {target} | {method} | skipped: needs ~{need / GB:.1f} GB, "
                          f"{available_bytes() / GB:.1f} GB available | | | | | |", flush=True)
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", method, str(root / file_dtype), target],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                extra = r["peak"] - r["baseline"]
                print(f"| {file_dtype} | {target} | {method} | {r['seconds']:.1f} | {r['baseline'] / GB:.2f} | "
                      f"{r['peak'] / GB:.2f} | {extra / GB:.2f} | {param_bytes / GB:.2f} | {extra / param_bytes:.2f} |",
                      flush=True)
    finally:
        if args.keep:
            print(f"checkpoints kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def write_checkpoints(cfg, root: Path, dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> int:
    """Checkpoints of random weights in ``root/<dtype>`` (float32 and/or bfloat16), written tensor by
    tensor; returns the parameter count."""
    import torch

    from segearth.checkpoint import OPTIONAL_KEYS, to_official_state_dict
    from segearth.config import official_config_json
    from segearth.modeling.segearth_r1 import SegEarthR1

    with torch.device("meta"):
        model = SegEarthR1(cfg)
    shapes = {k: tuple(v.shape) for k, v in to_official_state_dict(model).items() if not OPTIONAL_KEYS.search(k)}
    for dtype, name in ((getattr(torch, d), {"float32": "F32", "bfloat16": "BF16"}[d]) for d in dtypes):
        folder = root / str(dtype).removeprefix("torch.")
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(official_config_json(cfg)))
        header, offset = {}, 0
        for key, shape in shapes.items():
            size = dtype.itemsize
            for d in shape:
                size *= d
            header[key] = {"dtype": name, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
        gen = torch.Generator().manual_seed(0)
        with open(folder / "model.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for shape in shapes.values():
                t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
                f.write(t.view(-1).view(torch.uint8).numpy().tobytes())
    return sum(p.numel() for p in model.parameters())


def child(method: str, folder: str, target: str) -> None:
    import torch

    from segearth import checkpoint  # imported before the baseline is taken

    dtype = getattr(torch, target)
    baseline = peak_rss()
    start = time.perf_counter()
    model = (checkpoint.load_pretrained if method == "new" else old_load)(Path(folder), dtype=dtype)
    seconds = time.perf_counter() - start
    assert all(p.dtype == dtype for p in model.parameters())
    print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": peak_rss()}))


def old_load(folder: Path, dtype):
    """The loader before streaming: a dict of every tensor (memory-mapped), a float32 model, a copy, a cast."""
    import torch
    from safetensors import safe_open

    from segearth.checkpoint import UNUSED_KEYS, expand_official
    from segearth.config import config_from_dict
    from segearth.modeling.llm import split_fused_qkv
    from segearth.modeling.segearth_r1 import SegEarthR1

    weights = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                weights[k] = sf.get_tensor(k)
    cfg = config_from_dict(json.loads((folder / "config.json").read_text())["segearth"])
    with torch.device("meta"):
        model = SegEarthR1(cfg)
    model = model.to_empty(device="cpu")
    model.materialize_buffers()
    heads = cfg.llm.num_attention_heads
    converted = {}
    for key, tensor in weights.items():
        if UNUSED_KEYS.match(key):
            continue
        targets = expand_official(key, tuple(tensor.shape))
        parts = split_fused_qkv(tensor, heads) if len(targets) == 3 else (tensor,)
        # strict=False: a key the code does not map has no targets, and its tensor is dropped.
        for (ours, _), part in zip(targets, parts, strict=False):
            converted[ours] = part
    model.load_state_dict(converted, strict=False)
    return model.to(dtype).eval()


def _needed_bytes(method: str, numel: int, file_dtype: str, target: str) -> float:
    size = {"float32": 4, "bfloat16": 2}
    if method == "new":
        return numel * size[target] * 1.15 + 1 * GB
    cast = size[target] if target != "float32" else 0
    return numel * (size[file_dtype] + 4 + cast) + 1 * GB  # map + float32 model + cast


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """Peak RSS of this process's own memory. Not ru_maxrss: a child started by fork + exec starts
    with its parent's peak there (the parent here wrote the checkpoints)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: an upper bound


if __name__ == "__main__":
    main()
