"""The official SegEarth-R1 training losses.

Every mask prediction (the raw query's and each decoder layer's) gets ``5 x BCE + 5 x Dice`` on
PointRend-style importance-sampled points; EarthReason adds the LLM's next-token cross-entropy.
With one query and one target per sample, Hungarian matching is the identity and is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..metrics import UNKNOWN
from ..modeling.prompt import IGNORE_INDEX


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps [N, C, H, W] at points [N, P, 2] ((x, y) in [0, 1]) -> [N, C, P]."""
    out = F.grid_sample(maps, 2.0 * points.unsqueeze(2) - 1.0, mode="bilinear", align_corners=False)
    return out.squeeze(3)


def sample_uncertain_points(
    logits: torch.Tensor, cfg: LossConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Points where logits [N, 1, H, W] are least certain, plus uniform ones -> [N, num_points, 2]."""
    n = logits.shape[0]
    num_sampled = int(cfg.num_points * cfg.oversample_ratio)
    candidates = torch.rand(n, num_sampled, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits.detach().float(), candidates).abs()  # [N, 1, P]
    num_uncertain = int(cfg.importance_sample_ratio * cfg.num_points)
    top = torch.topk(uncertainty[:, 0], k=num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    num_random = cfg.num_points - num_uncertain
    if num_random > 0:
        extra = torch.rand(n, num_random, 2, device=logits.device, generator=generator)
        chosen = torch.cat([chosen, extra], dim=1)
    return chosen


def sigmoid_bce(point_logits: torch.Tensor, point_targets: torch.Tensor, num_masks: float,
                known: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE over points, summed over masks, / num_masks. Inputs [N, P].

    ``known`` [N, P] weights the points (0 where the target is unknown): the mean is then over the
    known points of each mask, and a mask with none contributes 0.
    """
    loss = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none")
    if known is None:
        return loss.mean(1).sum() / num_masks
    return ((loss * known).sum(1) / known.sum(1).clamp_min(1.0)).sum() / num_masks


def dice(point_logits: torch.Tensor, point_targets: torch.Tensor, num_masks: float,
         known: torch.Tensor | None = None) -> torch.Tensor:
    """1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1) per mask, summed, / num_masks. Inputs [N, P].

    ``known`` [N, P] leaves unknown points out of every sum."""
    probs = point_logits.sigmoid()
    if known is not None:
        probs, point_targets = probs * known, point_targets * known
    numerator = 2 * (probs * point_targets).sum(-1)
    denominator = probs.sum(-1) + point_targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def mask_loss_terms(
    layer_logits: list[torch.Tensor],
    targets: torch.Tensor,
    cfg: LossConfig,
    point_coords: list[torch.Tensor] | None = None,
    num_masks: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted BCE/Dice terms named as the official criterion does.

    Args:
        layer_logits: mask logits [N, 1, h, w] of the raw query and each layer (last = final).
        targets: targets [N, 1, H, W] at the input resolution: 1 target, 0 background and
            :data:`~segearth.metrics.UNKNOWN` where the truth is unknown (left out of both terms;
            without unknown pixels the terms are exactly the official ones).
        point_coords: optional fixed points per criterion call (call 0 = final, call c = aux c-1);
            otherwise they are importance-sampled.
        num_masks: normaliser (the official code all-reduces the target count over processes).
    Returns:
        ``loss_mask``/``loss_dice`` for the final layer and ``loss_mask_{i}``/``loss_dice_{i}`` for aux i.
    """
    targets = targets.to(layer_logits[-1].dtype)
    known_map = None
    if bool((targets == UNKNOWN).any()):
        known_map = (targets != UNKNOWN).to(targets.dtype)
        targets = targets * known_map
    num_masks = float(num_masks if num_masks is not None else max(targets.shape[0], 1))
    order = [layer_logits[-1]] + list(layer_logits[:-1])
    names = [""] + [f"_{i}" for i in range(len(layer_logits) - 1)]
    terms: dict[str, torch.Tensor] = {}
    for call, (logits, suffix) in enumerate(zip(order, names, strict=True)):
        points = point_coords[call] if point_coords is not None else sample_uncertain_points(logits, cfg, generator)
        points = points.to(device=logits.device, dtype=logits.dtype)
        point_logits = point_sample(logits, points)[:, 0]
        point_targets = point_sample(targets, points)[:, 0]
        # A point next to an unknown pixel interpolates towards it: only wholly known points count.
        known = None if known_map is None else (point_sample(known_map, points)[:, 0] > 0.999).to(point_logits.dtype)
        terms[f"loss_mask{suffix}"] = sigmoid_bce(point_logits, point_targets, num_masks, known)
        terms[f"loss_dice{suffix}"] = dice(point_logits, point_targets, num_masks, known)
    return terms


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits [B, L, V] predict labels shifted by one; IGNORE_INDEX skipped."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def total_loss(
    terms: dict[str, torch.Tensor], cfg: LossConfig, llm: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Weighted sums: ``loss_mask``, ``loss_dice`` (over all layers), ``loss_llm`` and ``total``."""
    mask_terms = sum(v for k, v in terms.items() if k.startswith("loss_mask"))
    dice_terms = sum(v for k, v in terms.items() if k.startswith("loss_dice"))
    assert isinstance(mask_terms, torch.Tensor) and isinstance(dice_terms, torch.Tensor)  # never an empty sum
    mask = cfg.mask_weight * mask_terms
    dice_sum = cfg.dice_weight * dice_terms
    llm = llm if llm is not None else torch.zeros((), device=mask.device)
    return {"loss_mask": mask, "loss_dice": dice_sum, "loss_llm": llm, "total": cfg.lm_weight * llm + mask + dice_sum}
