"""Letterboxing: fit an RGB image into the model's square input and map predictions back.

Geometry follows the reference preprocessing (spec §1.1): the longest side becomes ``size``,
the short side is ``int(short * size / long)`` (truncation, not rounding), and the image is
centred on a zero canvas with ``top = pad_h // 2`` and ``left = pad_w // 2``. Mean/std
normalisation is the model's job, not done here.

The image resize is the official one, ``cv2.resize(..., INTER_LINEAR)``, when OpenCV is installed
(``pip install 'segearth[exact]'``): the model then sees bit for bit what the official preprocessing
feeds it. OpenCV's uint8 path uses 11-bit fixed-point weights with SIMD rounding (and switches to
area averaging for exact 2x reductions), which no float formula reproduces. Without OpenCV the
resize is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` without
antialiasing — the same half-pixel geometry, within ±1 grey level of OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: raster reading (e.g. the server's upload workers) needs only the
# geometry here, and importing torch costs ~300 MB of RSS per process.
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def fit_long_side(height: int, width: int, size: int) -> tuple[int, int]:
    """Return ``(new_h, new_w)`` with the longest side equal to ``size`` (reference truncation)."""
    if height <= 0 or width <= 0 or size <= 0:
        raise ValueError(f"sizes must be positive, got image {height}x{width} and size {size}")
    if width > height:
        return max(1, int(height * size / width)), size
    return size, max(1, int(width * size / height))


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``in_h × in_w`` pixels sits on the ``size × size`` model canvas."""

    size: int
    in_h: int
    in_w: int
    new_h: int
    new_w: int
    top: int
    left: int

    @classmethod
    def fit(cls, in_h: int, in_w: int, size: int) -> Letterbox:
        """The placement of an ``in_h × in_w`` image: long side to ``size``, centred (spec §1.1)."""
        new_h, new_w = fit_long_side(in_h, in_w, size)
        return cls(size, in_h, in_w, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2)

    @property
    def scale(self) -> float:
        """Canvas pixels per input pixel (along the longest side)."""
        return max(self.new_h, self.new_w) / max(self.in_h, self.in_w)

    def unletterbox(self, canvas: ArrayT, out_h: int | None = None, out_w: int | None = None) -> ArrayT:
        """Crop the padding off a canvas-sized prediction and resize it to ``out_h × out_w``.

        ``canvas`` is a 2-D ``(H, W)`` array or tensor (numpy in → numpy out, torch in →
        torch out). Float inputs (logits, probabilities) are resized bilinearly with
        ``align_corners=False``; bool/integer inputs (binary masks) with ``nearest-exact``
        so they stay binary. A canvas at another resolution than ``size`` (the decoder's raw
        256² logits) is first brought to ``size × size`` the same way, as the reference
        post-processing does (spec §1.9), so the crop offsets stay exact integers.
        ``out_h``/``out_w`` default to the letterboxed image's own size.
        """
        out_h = self.in_h if out_h is None else out_h
        out_w = self.in_w if out_w is None else out_w
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(canvas)) if isinstance(canvas, np.ndarray) else canvas
        if tensor.ndim != 2:
            raise ValueError(f"expected a 2-D canvas, got shape {tuple(tensor.shape)}")
        is_float = tensor.is_floating_point()
        work = tensor.to(torch.float32)[None, None]
        if tuple(work.shape[-2:]) != (self.size, self.size):
            work = _resize(work, self.size, self.size, is_float)
        work = work[..., self.top : self.top + self.new_h, self.left : self.left + self.new_w]
        out = _resize(work, out_h, out_w, is_float)[0, 0].to(tensor.dtype)
        return out.numpy() if isinstance(canvas, np.ndarray) else out


def _resize(x: torch.Tensor, height: int, width: int, bilinear: bool) -> torch.Tensor:
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (height, width):
        return x
    if bilinear:
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return F.interpolate(x, size=(height, width), mode="nearest-exact")


def letterbox(image: np.ndarray, size: int = 1024) -> tuple[np.ndarray, Letterbox]:
    """Letterbox an ``(H, W, 3)`` uint8 RGB image onto a ``size × size`` zero canvas.

    Returns the uint8 canvas and the :class:`Letterbox` needed to undo it.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    box = Letterbox.fit(height, width, size)
    new_h, new_w, top, left = box.new_h, box.new_w, box.top, box.left
    resized = image if (new_h, new_w) == image.shape[:2] else resize_rgb(image, new_h, new_w)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, box


def resize_rgb(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Bilinear resize of ``(H, W, 3)`` uint8: OpenCV's ``INTER_LINEAR`` if installed (see module docstring)."""
    try:
        import cv2
    except ImportError:
        import torch
        import torch.nn.functional as F

        chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(torch.float32)
        out = F.interpolate(chw, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
        return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
