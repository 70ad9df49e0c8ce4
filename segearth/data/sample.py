"""The one record type every dataset reader yields."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from segearth import metrics
from segearth.data.io import read_rgb
from segearth.errors import InputError

SampleKind = Literal["referring", "reasoning", "absent"]
SAMPLE_KINDS: tuple[str, ...] = ("referring", "reasoning", "absent")

#: Answer the official EarthReason loader substitutes for an empty answer list;
#: reused for every sample whose target is empty.
NO_TARGET_ANSWER = "There is no target object in the image."

#: Mask value of a pixel whose truth is unknown (e.g. outside every OpenStreetMap polygon of a
#: partially labelled scene): training and scoring leave it out; it is never target nor background.
UNKNOWN = metrics.UNKNOWN


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
        image_loader: zero-argument callable returning the image as ``uint8 [H, W, 3]``, for
            images that are not a whole file (a window of a raster, a band combination); ``None``
            reads ``image_path``.
        image_id: identifies the image when several differ in ``image_path`` only by window or
            bands (caches and per-image grouping use :attr:`image_key`).
        source: where the sample comes from (``"fair_buildings/kampala"``), for breakdowns.
        phrasing: ``"seen"`` or ``"heldout"`` when the question comes from the question bank.
    """

    id: str
    image_path: Path
    question: str
    kind: SampleKind
    answer: str | None
    mask_loader: Callable[[], np.ndarray] = field(repr=False, compare=False)
    class_name: str | None = None
    image_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    image_id: str | None = None
    source: str | None = None
    phrasing: str | None = None

    @property
    def image_key(self) -> str:
        """One string per distinct image (samples sharing it are encoded once)."""
        return self.image_id or str(self.image_path)

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(f"sample {self.id!r}: kind must be one of {SAMPLE_KINDS}, got {self.kind!r}")

    def load_image(self) -> np.ndarray:
        """The image as ``uint8 [H, W, 3]`` RGB."""
        return self.image_loader() if self.image_loader is not None else read_rgb(self.image_path)

    def load_mask(self) -> np.ndarray:
        """The target as ``uint8 [H, W]``: 1 target, 0 background, :data:`UNKNOWN` unknown."""
        mask = self.mask_loader()
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise InputError(
                f"sample {self.id!r}: mask loader returned {mask.dtype} {mask.shape}, expected uint8 [H, W]"
            )
        return mask


class SampleList:
    """Sequence behaviour for a dataset reader from its ``samples`` list (an attribute or a cached property)."""

    if TYPE_CHECKING:  # an attribute in some readers, a cached property in others: declared for mypy only
        @property
        def samples(self) -> list[Sample]: ...

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)
