"""Segmentation metrics exactly as the official SegEarth-R1 evaluation computes them (spec §6).

Per sample, only the foreground entry of the official two-bin histogram is used:

* ``I = |pred == 1  and  target == 1|``, ``U = |pred == 1| + |target == 1| - I``.
  The official code histograms with ``torch.histc(bins=2, min=0, max=1)``, so a target value
  outside [0, 1] (e.g. 2 where RRSIS-D polygons overlap and were summed) falls in no bin: it is
  neither target foreground nor an intersection. For the foreground that is the same as
  treating every target value other than 1 as background, which is what this module does.
* ``iou = I / (U + 1e-5)`` in float32, and ``iou = 1.0`` where ``U == 0`` (empty target and empty
  prediction). An empty target with a non-empty prediction scores 0.

Over a split: ``gIoU`` = mean per-sample IoU, ``cIoU = ΣI / (ΣU + 1e-10)``, and
``Pr@t`` = fraction of samples with ``iou > t`` (strict) for t in 0.5 … 0.9.

Two protocols decide the canvas the scores are computed on:

* ``"paper"``: the official one. The prediction is the model's 1024² letterboxed canvas and the
  target is letterboxed the same way (nearest resize, zero padding; :func:`letterbox_mask`), so the
  padding band counts and small images are scored at the up-sampled scale.
* ``"native"``: prediction and target at the image's own resolution (the un-letterboxed
  prediction), which is what a user of the masks experiences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .geo.letterbox import Letterbox

Protocol = Literal["paper", "native"]
PROTOCOLS: tuple[str, ...] = ("paper", "native")
PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_SIZE = 1024
_IOU_EPS = 1e-5
_CIOU_EPS = 1e-10
#: Target value of a pixel whose truth is unknown (partially labelled scenes, weak labels).
UNKNOWN = 255

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class SampleScore:
    """Foreground scores of one sample: ``iou`` in [0, 1], pixel counts ``intersection``/``union``."""

    iou: float
    intersection: int
    union: int


def nearest_indices(src_len: int, dst_len: int) -> np.ndarray:
    """Source index of each destination pixel for OpenCV ``INTER_NEAREST``: ``floor(dst * src/dst_len)``.

    OpenCV evaluates ``x * (1 / (dst_len / src_len))`` in double precision; doing the same keeps
    the rare exact-integer cases (where rounding decides) identical.
    """
    scale = 1.0 / (dst_len / src_len)
    idx = np.floor(np.arange(dst_len, dtype=np.float64) * scale).astype(np.intp)
    return np.minimum(idx, src_len - 1)


def resize_nearest(mask: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W]`` to ``[new_h, new_w]`` (OpenCV ``INTER_NEAREST`` indices)."""
    rows = nearest_indices(mask.shape[0], new_h)
    cols = nearest_indices(mask.shape[1], new_w)
    return mask[rows[:, None], cols[None, :]]


def letterbox_mask(mask: np.ndarray, size: int = PAPER_SIZE) -> np.ndarray:
    """Letterbox a target ``[H, W]`` onto a zero ``[size, size]`` canvas like the official GT path."""
    if mask.ndim != 2:
        raise ValueError(f"letterbox_mask expects a [H, W] mask, got shape {mask.shape}")
    height, width = mask.shape
    geo = Letterbox.fit(height, width, size)
    canvas = np.zeros((size, size), dtype=mask.dtype)
    canvas[geo.top : geo.top + geo.new_h, geo.left : geo.left + geo.new_w] = resize_nearest(mask, geo.new_h, geo.new_w)
    return canvas


def protocol_target(mask: np.ndarray, protocol: Protocol, size: int = PAPER_SIZE) -> np.ndarray:
    """The target on the canvas ``protocol`` scores on: letterboxed (``paper``) or unchanged (``native``)."""
    if protocol == "paper":
        return letterbox_mask(mask, size)
    if protocol == "native":
        return mask
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _as_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _squeeze_to_2d(x: np.ndarray, name: str) -> np.ndarray:
    # The official code compares [1024,1024] predictions with [1,1024,1024] targets.
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [H, W] mask (leading singleton dims allowed), got shape {x.shape}")
    return x


def score_sample(pred: ArrayLike, target: ArrayLike) -> SampleScore:
    """Official foreground IoU of one binary prediction against one target.

    Args:
        pred: ``[H, W]`` (or ``[1, H, W]``) boolean or {0, 1} prediction; threshold logits first.
        target: same spatial shape; 1 is foreground, every other value counts as background
            (see the module docstring for why that matches ``torch.histc``).
    """
    p = _squeeze_to_2d(_as_numpy(pred), "prediction")
    t = _squeeze_to_2d(_as_numpy(target), "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} does not match target shape {t.shape}")
    if p.dtype != np.bool_:
        if not np.isin(p, (0, 1)).all():
            raise ValueError("prediction must be binary (bool or 0/1); threshold the logits first")
        p = p == 1
    t_fg = t == 1
    intersection = int(np.count_nonzero(p & t_fg))
    union = int(np.count_nonzero(p)) + int(np.count_nonzero(t_fg)) - intersection
    if union == 0:
        iou = 1.0
    else:
        # float32 like the official histc counts, so Pr@ ties resolve the same way.
        iou = float(np.float32(intersection) / (np.float32(union) + np.float32(_IOU_EPS)))
    return SampleScore(iou=iou, intersection=intersection, union=union)


def score_known(pred: ArrayLike, target: ArrayLike) -> SampleScore:
    """:func:`score_sample` over the known pixels only: where ``target`` is :data:`UNKNOWN` the
    prediction is not counted (neither right nor wrong). Equal to :func:`score_sample` on
    targets without unknown pixels."""
    p = _squeeze_to_2d(_as_numpy(pred), "prediction")
    t = _squeeze_to_2d(_as_numpy(target), "target")
    if p.shape == t.shape:
        p = np.where(t == UNKNOWN, False, p != 0) if p.dtype != np.bool_ else p & (t != UNKNOWN)
    return score_sample(p, t)


def summarize(scores: list[SampleScore]) -> dict[str, float]:
    """``{"n", "gIoU", "cIoU", "Pr@0.5" … "Pr@0.9"}`` over ``scores`` (NaN rates for an empty list)."""
    n = len(scores)
    ious = np.array([s.iou for s in scores], dtype=np.float64)
    total_i = sum(s.intersection for s in scores)
    total_u = sum(s.union for s in scores)
    out: dict[str, float] = {
        "n": float(n),
        "gIoU": float(ious.mean()) if n else float("nan"),
        "cIoU": total_i / (total_u + _CIOU_EPS) if n else float("nan"),
    }
    for t in PRECISION_THRESHOLDS:
        out[f"Pr@{t}"] = float((ious > t).mean()) if n else float("nan")
    return out


@dataclass
class SegmentationMeter:
    """Accumulates per-sample scores over a split; optionally also per group (e.g. sample kind).

    Usage: ``meter.update(pred, target, group=sample.kind)`` per sample, then ``meter.summary()``.
    """

    scores: list[SampleScore] = field(default_factory=list)
    groups: dict[str, list[SampleScore]] = field(default_factory=dict)

    def update(self, pred: ArrayLike, target: ArrayLike, group: str | None = None) -> SampleScore:
        """Score one sample (see :func:`score_sample`), record it and return its score."""
        score = score_sample(pred, target)
        self.scores.append(score)
        if group is not None:
            self.groups.setdefault(group, []).append(score)
        return score

    def summary(self) -> dict[str, float]:
        """Metrics over every sample seen so far."""
        return summarize(self.scores)

    def group_summaries(self) -> dict[str, dict[str, float]]:
        """Metrics per group label passed to :meth:`update`, in first-seen order."""
        return {name: summarize(scores) for name, scores in self.groups.items()}
