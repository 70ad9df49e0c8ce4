"""Periodic validation during training: gIoU/cIoU with the paper protocol, and a PNG of predictions.

Paper protocol (spec §6): the prediction is the final mask logits up-sampled (bilinear) to the
``S x S`` letterboxed canvas and thresholded at 0; the target is letterboxed the same way (nearest,
zero padding), so the padding band counts. Every process scores a strided share of the split through
the wrapped model (FSDP needs every rank in every forward), shares are padded to equal length so all
ranks run the same number of forwards, and the scores are gathered.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..metrics import SampleScore, score_known, summarize
from .collate import Collator
from .data import LetterboxedDataset

VIS_SIDE = 192  # pixels per tile in the PNG grid


@dataclass
class Visual:
    """One validation sample for the PNG grid (tiles already reduced to ``VIS_SIDE``)."""

    index: int
    question: str
    image: np.ndarray  # [VIS_SIDE, VIS_SIDE, 3] uint8
    target: np.ndarray  # [VIS_SIDE, VIS_SIDE] bool
    pred: np.ndarray  # [VIS_SIDE, VIS_SIDE] bool
    iou: float


def _shrink(x: np.ndarray) -> np.ndarray:
    """A canvas (uint8 RGB, or a bool mask) reduced to the tile side."""
    if x.dtype == bool:
        img = Image.fromarray(x.astype(np.uint8) * 255).resize((VIS_SIDE, VIS_SIDE), Image.Resampling.NEAREST)
        return np.asarray(img) > 127
    return np.asarray(Image.fromarray(x).resize((VIS_SIDE, VIS_SIDE), Image.Resampling.BILINEAR))


@torch.no_grad()
def evaluate(accelerator, module: torch.nn.Module, dataset: LetterboxedDataset, collator: Collator,
             batch_size: int, num_vis: int) -> tuple[dict[str, float], list[Visual]]:
    """Scores of the whole ``dataset`` (on every process) and the first ``num_vis`` visuals."""
    n, world, rank = len(dataset), accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(n / world)
    # Strided share, padded by wrapping around; positions >= n are duplicates and are not scored.
    positions = list(range(rank, per_rank * world, world))
    records: list[tuple[int, SampleScore]] = []
    visuals: list[Visual] = []
    for start in range(0, len(positions), batch_size):
        chunk = positions[start : start + batch_size]
        examples = [dataset[p % n] for p in chunk]
        batch = collator(examples).to(accelerator.device)
        out = module(batch.images, batch.input_ids, batch.attention_mask, batch.refer_ids, batch.answer_ids)
        size = batch.images.shape[-2:]
        pred = F.interpolate(out["logits"].float(), size=size, mode="bilinear", align_corners=False)[:, 0] > 0
        pred_np = pred.cpu().numpy()
        for row, (pos, ex) in enumerate(zip(chunk, examples, strict=True)):
            if pos >= n:
                continue
            score = score_known(pred_np[row], ex.mask)
            records.append((pos, score))
            if pos < num_vis:
                visuals.append(Visual(pos, ex.question, _shrink(ex.image), _shrink(ex.mask == 1),
                                      _shrink(pred_np[row]), score.iou))
    if world > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        visuals = gather_object(visuals)
    scores = [s for _, s in sorted(records, key=lambda r: r[0])]
    return summarize(scores), sorted(visuals, key=lambda v: v.index)


def _overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = 0.45 * out[mask] + 0.55 * np.array(colour, dtype=np.float32)
    return out.astype(np.uint8)


def save_grid(visuals: list[Visual], path: Path, title: str) -> None:
    """One row per sample: image | target (green) | prediction (red), with the question and IoU."""
    if not visuals:
        return
    caption = 34
    width, row_h = 3 * VIS_SIDE, VIS_SIDE + caption
    grid = Image.new("RGB", (width, 18 + row_h * len(visuals)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 3), title, fill="black")
    for i, v in enumerate(visuals):
        y = 18 + i * row_h
        text = textwrap.shorten(v.question, 95) + f"   IoU {v.iou:.3f}"
        draw.text((4, y + 2), "\n".join(textwrap.wrap(text, 95)[:2]), fill="black")
        tiles = [v.image, _overlay(v.image, v.target, (0, 220, 0)), _overlay(v.image, v.pred, (230, 0, 0))]
        for j, tile in enumerate(tiles):
            grid.paste(Image.fromarray(tile), (j * VIS_SIDE, y + caption))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
