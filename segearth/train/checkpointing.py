"""Atomic training checkpoints.

Layout of ``output_dir/checkpoint-<step>/``::

    config.json, model.safetensors, tokenizer files   the inference checkpoint (segearth predict/eval)
    training_state/                                   accelerate state: weights (with LoRA adapters
                                                      unmerged), optimizer, scheduler, per-process RNG
    trainer_state.json                                step, micro-batch, epoch/position, metrics

Everything is written into ``.tmp-checkpoint-<step>`` in the same folder, flushed to disk, and only
then renamed to its final name: a checkpoint folder either is complete or does not exist, so a
SIGKILL at any moment leaves the last complete checkpoint usable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
ACCELERATE_DIR = "training_state"


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output_dir`` as ``(step, path)``, oldest first."""
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            m = CHECKPOINT_RE.match(path.name)
            if m and path.is_dir() and (path / STATE_FILE).is_file():
                found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint, or ``None``."""
    found = checkpoint_dirs(output_dir)
    return found[-1][1] if found else None


def temp_dir(output_dir: Path, step: int) -> Path:
    """The staging folder of checkpoint ``step`` (same parent, so the final rename is atomic)."""
    return output_dir / f".tmp-checkpoint-{step}"


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to stable storage before the rename publishes it."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_state(staging: Path, state: dict[str, Any]) -> None:
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2))


def publish(staging: Path, final: Path) -> None:
    """fsync ``staging`` then rename it to ``final`` (replacing an older folder of that name)."""
    _fsync_tree(staging)
    if final.exists():  # a re-run reached the same step: retire the old one first
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(final.parent)


def best_checkpoint(output_dir: Path, metric: str = "gIoU") -> Path | None:
    """The complete checkpoint whose own validation (run at its step) scored highest on ``metric``."""
    best, best_score = None, float("-inf")
    for step, path in checkpoint_dirs(output_dir):
        evaluated = read_state(path).get("last_eval") or {}
        if evaluated.get("step") == step and evaluated.get(metric, float("-inf")) > best_score:
            best, best_score = path, evaluated[metric]
    return best


def prune(output_dir: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest complete checkpoints and the best validated one.

    The best is kept because validation scores rise and fall: the newest checkpoints are needed to
    resume, the best one is the one to ship.
    """
    best = best_checkpoint(output_dir)
    for _, path in checkpoint_dirs(output_dir)[:-keep_last]:
        if path != best:
            shutil.rmtree(path, ignore_errors=True)


def clean_staging(output_dir: Path) -> None:
    """Remove staging folders left by a killed run (they are never complete checkpoints)."""
    if output_dir.is_dir():
        for path in output_dir.glob(".tmp-checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())
