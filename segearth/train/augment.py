"""Training-time augmentation for class-style targets (the land-cover set): scale, rotation, light.

Why: the land-cover scenes come in sizes from 509 to 2 149 pixels, so letterboxing alone shows each
class at one scale per scene (a 2 000-pixel scene shrinks five-fold, a 500-pixel one not at all),
and a few dozen scenes are seen again and again. Random square crops re-scale the scene (zooming in
up to ``1 / min_crop``), 90° rotations and flips are free for nadir imagery, and a mild
brightness/contrast change covers acquisition differences. The target of a crop is the class mask
inside the crop; a crop that misses the class is an honest empty target.

Only for targets that do not depend on the image frame: a crop or a flip changes what "the car on
the left" or an EarthReason answer refers to, so the training config refuses ``data.augment`` for
other datasets.

Determinism: the draw for a sample depends only on ``(seed, epoch, index)``, never on a global RNG
or on the worker that loads it, so a resumed run sees the same augmented batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..data.sample import Sample
from ..geo.letterbox import fit_long_side, letterbox
from ..metrics import letterbox_mask
from .collate import Example


@dataclass(frozen=True)
class AugmentParams:
    """What one draw does: crop box on the stored copy (None = whole scene letterboxed), then turns."""

    crop: tuple[int, int, int] | None  # (top, left, side) of a square crop, or None for the letterbox
    rot90: int  # quarter turns counter-clockwise
    flip: bool  # mirror left-right after the turn
    contrast: float
    brightness: float


def draw_params(rng: np.random.Generator, height: int, width: int, min_crop: float, p_full: float) -> AugmentParams:
    """Random augmentation for a stored scene of ``height × width`` pixels."""
    crop = None
    if rng.random() >= p_full:
        side = max(1, round(min(height, width) * rng.uniform(min_crop, 1.0)))
        crop = (int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side)
    return AugmentParams(crop, int(rng.integers(0, 4)), bool(rng.random() < 0.5),
                         float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.9, 1.1)))


def apply_params(image: np.ndarray, mask: np.ndarray, p: AugmentParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``image [H, W, 3] uint8`` and ``mask [H, W] uint8`` → augmented ``size × size`` canvases."""
    if p.crop is None:
        image, _ = letterbox(image, size)
        mask = letterbox_mask(mask, size)
    else:
        top, left, side = p.crop
        image = np.asarray(Image.fromarray(image[top : top + side, left : left + side])
                           .resize((size, size), Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask[top : top + side, left : left + side])
                          .resize((size, size), Image.Resampling.NEAREST))
    image, mask = np.rot90(image, p.rot90), np.rot90(mask, p.rot90)
    if p.flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    # Contrast around the scene's mean grey, then brightness; letterbox padding stays black.
    valid = image.any(axis=-1, keepdims=True)
    mean = float(image.mean())
    light = ((image.astype(np.float32) - mean) * p.contrast + mean) * p.brightness
    image = np.where(valid, np.clip(light, 0, 255), 0).astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class AugmentedDataset(Dataset):
    """Samples re-drawn on every visit; indexed by ``(index, epoch)`` pairs (see ``BatchOrder``).

    Decoded scenes are kept in RAM at most ``2 × size`` on the long side (crops never need more:
    at the deepest zoom a crop of ``min_crop`` of that copy is still about ``size`` pixels), masks
    bit-packed per sample, so the land-cover train split costs about 100 MB.
    """

    def __init__(self, samples: Sequence[Sample], size: int, seed: int, min_crop: float = 0.5,
                 p_full: float = 0.2) -> None:
        if not 0 < min_crop <= 1:
            raise ValueError(f"min_crop must be in (0, 1], got {min_crop}")
        self.samples, self.size, self.seed = samples, size, seed
        self.min_crop, self.p_full = min_crop, p_full
        self._images: dict[str, np.ndarray] = {}
        self._masks: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _stored(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        key = str(sample.image_path)
        if key not in self._images:
            image = sample.load_image()
            height, width = image.shape[:2]
            h, w = fit_long_side(height, width, min(2 * self.size, max(height, width)))
            self._images[key] = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        image = self._images[key]
        if index not in self._masks:
            mask = sample.load_mask()
            small = np.asarray(Image.fromarray(mask).resize(image.shape[1::-1], Image.Resampling.NEAREST))
            self._masks[index] = (np.packbits(small), small.shape)
        packed, shape = self._masks[index]
        return image, np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape)

    def __getitem__(self, key: tuple[int, int]) -> Example:
        index, epoch = key
        sample = self.samples[index]
        image, mask = self._stored(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        height, width = image.shape[:2]
        params = draw_params(rng, height, width, self.min_crop, self.p_full)
        image, mask = apply_params(image, mask, params, self.size)
        return Example(index, sample.id, image, mask, sample.question, sample.answer, sample.kind)
