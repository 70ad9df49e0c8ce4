"""The one record type every dataset reader yields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from segearth.data.io import read_rgb

SampleKind = Literal["referring", "reasoning", "absent"]
SAMPLE_KINDS: tuple[str, ...] = ("referring", "reasoning", "absent")

#: Answer the official EarthReason loader substitutes for an empty answer list;
#: reused for every sample whose target is empty.
NO_TARGET_ANSWER = "There is no target object in the image."


@dataclass(frozen=True)
class Sample:
    """One (image, question, target mask) triple.

    Images and masks are decoded lazily so that indexing a dataset stays cheap.

    Attributes:
        id: unique, stable identifier inside its dataset (e.g. ``"val/0001#2"``).
        image_path: the image file on disk.
        question: the text given to the model (referring expression or question).
        kind: ``"referring"`` (explicit expression), ``"reasoning"`` (implicit
            question) or ``"absent"`` (the asked-for object is not in the image; empty target).
        answer: reference answer text for the LM (EarthReason-style), or ``None``.
        mask_loader: zero-argument callable returning the target as ``uint8 [H, W]``
            with values in {0, 1}, at the image's real size.
        class_name: semantic class of the target when the dataset has one
            (land-cover class, RRSIS-D category), else ``None``.
    """

    id: str
    image_path: Path
    question: str
    kind: SampleKind
    answer: str | None
    mask_loader: Callable[[], np.ndarray] = field(repr=False, compare=False)
    class_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(f"sample {self.id!r}: kind must be one of {SAMPLE_KINDS}, got {self.kind!r}")

    def load_image(self) -> np.ndarray:
        """The image as ``uint8 [H, W, 3]`` RGB."""
        return read_rgb(self.image_path)

    def load_mask(self) -> np.ndarray:
        """The binary target as ``uint8 [H, W]`` in {0, 1}."""
        mask = self.mask_loader()
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise ValueError(
                f"sample {self.id!r}: mask loader returned {mask.dtype} {mask.shape}, expected uint8 [H, W]"
            )
        return mask
