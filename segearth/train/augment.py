"""Training-time augmentation for class-style targets (land cover, multi-source): scale, rotation, light,
sensor.

Why: the land-cover scenes come in sizes from 509 to 2 149 pixels, so letterboxing alone shows each
class at one scale per scene (a 2 000-pixel scene shrinks five-fold, a 500-pixel one not at all),
and a few dozen scenes are seen again and again. Random square crops re-scale the scene (zooming in
up to ``1 / min_crop``), 90° rotations and flips are free for nadir imagery, and a mild
brightness/contrast change covers acquisition differences. For imagery from anywhere (the built-in
model) a draw may also coarsen the ground sampling distance (down- and up-sampling: a sharp 0.1 m
drone tile then looks like 0.3-0.5 m), turn the image grey (panchromatic sensors), tint the bands
(another sensor's colour balance) or add haze (thin cloud, no atmospheric correction). The target
of a crop is the class mask inside the crop; a crop that misses the class is an honest empty target.

Only for targets that do not depend on the image frame: a crop or a flip changes what "the car on
the left" or an EarthReason answer refers to, so the training config refuses ``data.augment`` for
other datasets.

Determinism: the draw for a sample depends only on ``(seed, epoch, index)``, never on a global RNG
or on the worker that loads it, so a resumed run sees the same augmented batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..data.sample import UNKNOWN, Sample
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
    resample: float = 1.0  # < 1: down-sample by this factor and back up (a coarser sensor)
    grey: bool = False  # replace the bands by their mean (panchromatic)
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-band colour balance
    haze: float = 0.0  # blend towards a bright grey veil (0: clear)


#: Photometric draws of :func:`draw_params` with ``sensor=True`` (probabilities and ranges).
P_RESAMPLE, RESAMPLE_RANGE = 0.3, (0.25, 0.75)
P_GREY, P_TINT, TINT = 0.1, 0.5, 0.1
P_HAZE, HAZE_RANGE, HAZE_LEVEL = 0.25, (0.05, 0.4), 200.0


def draw_params(rng: np.random.Generator, height: int, width: int, min_crop: float, p_full: float,
                sensor: bool = False) -> AugmentParams:
    """Random augmentation for a stored scene of ``height × width`` pixels (``sensor``: also GSD,
    grey, colour balance and haze changes)."""
    crop = None
    if rng.random() >= p_full:
        side = max(1, round(min(height, width) * rng.uniform(min_crop, 1.0)))
        crop = (int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side)
    params = AugmentParams(crop, int(rng.integers(0, 4)), bool(rng.random() < 0.5),
                           float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.9, 1.1)))
    if not sensor:
        return params
    draws = rng.random(4)
    gains = rng.uniform(1 - TINT, 1 + TINT, 3)
    return replace(
        params,
        resample=float(rng.uniform(*RESAMPLE_RANGE)) if draws[0] < P_RESAMPLE else 1.0,
        grey=bool(draws[1] < P_GREY),
        gains=(float(gains[0]), float(gains[1]), float(gains[2])) if draws[2] < P_TINT else (1.0, 1.0, 1.0),
        haze=float(rng.uniform(*HAZE_RANGE)) if draws[3] < P_HAZE else 0.0,
    )


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
    valid = image.any(axis=-1, keepdims=True)
    if p.resample < 1.0:
        small = max(8, round(size * p.resample))
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((small, small), Image.Resampling.BOX)
                           .resize((size, size), Image.Resampling.BILINEAR))
    light = image.astype(np.float32)
    if p.grey:
        light = np.repeat(light.mean(axis=-1, keepdims=True), 3, axis=-1)
    light = light * np.asarray(p.gains, np.float32)
    # Contrast around the scene's mean grey, then brightness, then haze; letterbox padding stays black.
    mean = float(light.mean())
    light = ((light - mean) * p.contrast + mean) * p.brightness
    light = light * (1 - p.haze) + HAZE_LEVEL * p.haze
    image = np.where(valid, np.clip(light, 0, 255), 0).astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class AugmentedDataset(Dataset):
    """Samples re-drawn on every visit; indexed by ``(index, epoch)`` pairs (see ``BatchOrder``).

    Decoded scenes are kept in RAM at most ``2 × size`` on the long side (crops never need more:
    at the deepest zoom a crop of ``min_crop`` of that copy is still about ``size`` pixels), masks
    bit-packed per sample (unknown pixels, :data:`~segearth.data.sample.UNKNOWN`, in a second bit
    plane), so the land-cover train split costs about 100 MB. ``sensor`` adds the sensor draws
    (coarser GSD, grey, colour balance, haze) to every draw.
    """

    def __init__(self, samples: Sequence[Sample], size: int, seed: int, min_crop: float = 0.5,
                 p_full: float = 0.2, sensor: bool = False) -> None:
        if not 0 < min_crop <= 1:
            raise ValueError(f"min_crop must be in (0, 1], got {min_crop}")
        self.samples, self.size, self.seed = samples, size, seed
        self.min_crop, self.p_full, self.sensor = min_crop, p_full, sensor
        self._images: dict[str, np.ndarray] = {}
        # Per sample: packed target bits, packed unknown bits (None when every pixel is known), shape.
        self._masks: dict[int, tuple[np.ndarray, np.ndarray | None, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _stored(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        key = sample.image_key
        if key not in self._images:
            image = sample.load_image()
            height, width = image.shape[:2]
            h, w = fit_long_side(height, width, min(2 * self.size, max(height, width)))
            self._images[key] = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
        image = self._images[key]
        if index not in self._masks:
            mask = sample.load_mask()
            small = np.asarray(Image.fromarray(mask).resize(image.shape[1::-1], Image.Resampling.NEAREST))
            unknown = small == UNKNOWN
            self._masks[index] = (np.packbits(small == 1), np.packbits(unknown) if unknown.any() else None,
                                  small.shape)
        target, unknown_bits, shape = self._masks[index]
        count = shape[0] * shape[1]
        mask = np.unpackbits(target, count=count).reshape(shape)
        if unknown_bits is not None:
            mask[np.unpackbits(unknown_bits, count=count).reshape(shape) == 1] = UNKNOWN
        return image, mask

    def __getitem__(self, key: tuple[int, int]) -> Example:
        index, epoch = key
        sample = self.samples[index]
        image, mask = self._stored(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        height, width = image.shape[:2]
        params = draw_params(rng, height, width, self.min_crop, self.p_full, self.sensor)
        image, mask = apply_params(image, mask, params, self.size)
        return Example(index, sample.id, image, mask, sample.question, sample.answer, sample.kind)
