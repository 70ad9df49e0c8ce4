"""Reasoning questions over real land-cover imagery (Dubai aerial classes, Massachusetts roads).

The images and masks are real; the questions are generated from the class tables in
:mod:`segearth.data.questions`, so every question's target is the full mask of one class.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from segearth.data.io import raster_size, read_bands
from segearth.data.questions import CLASS_QUESTIONS
from segearth.data.sample import NO_TARGET_ANSWER, Sample, SampleList
from segearth.errors import ConfigError, InputError

SPLITS = ("train", "val", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIX = "_mask.png"

#: Dubai mask colours (0xRRGGBB) → class. ``#9B9B9B`` (unlabeled) and stray ``#000000`` pixels
#: belong to no class: they are never a target, and the questions ignore them.
DUBAI_COLOURS: dict[str, int] = {
    "building": 0x3C1098,
    "land": 0x8429F6,
    "road": 0x6EC1E4,
    "vegetation": 0xFEDD3A,
    "water": 0xE2A929,
}
DUBAI_UNLABELED = (0x9B9B9B, 0x000000)
#: A Dubai-layout mask with more pixels than this in colours outside the palette is rejected:
#: it was almost certainly coded with another palette (e.g. the display colours of classes.json).
MAX_UNKNOWN_COLOUR_FRACTION = 0.05
ROAD_VALUE = 255


@dataclass(frozen=True)
class Scene:
    """One image/mask pair.

    Attributes:
        layout: ``"dubai"`` (RGB colour-coded 5-class mask) or ``"roads"`` (single band, 255 = road).
        group: unit of the train/val split: the tile folder (Dubai tiles overlap in content, so a
            tile never straddles the split) or the image id (Massachusetts).
        id: stable identifier, e.g. ``"dubai/tile_1/image_part_001"``.
    """

    layout: str
    group: str
    id: str
    image_path: Path
    mask_path: Path

    @property
    def classes(self) -> tuple[str, ...]:
        """Classes this layout labels (questions about the others could not be scored)."""
        return tuple(DUBAI_COLOURS) if self.layout == "dubai" else ("road",)


def _pair(mask_path: Path, layout: str, group: str, id_prefix: str) -> Scene:
    stem = mask_path.name[: -len(MASK_SUFFIX)]
    for suffix in IMAGE_SUFFIXES:
        image_path = mask_path.with_name(stem + suffix)
        if image_path.is_file():
            return Scene(layout, group, f"{id_prefix}/{stem}", image_path, mask_path)
    raise FileNotFoundError(f"{mask_path}: no image {stem}{{{','.join(IMAGE_SUFFIXES)}}} next to it")


def _dubai_scenes(folder: Path, id_prefix: str) -> list[Scene]:
    return [
        _pair(mask, "dubai", tile.name, f"{id_prefix}/{tile.name}")
        for tile in sorted(p for p in folder.glob("tile_*") if p.is_dir())
        for mask in sorted(tile.glob("*" + MASK_SUFFIX))
    ]


def _road_scenes(folder: Path, id_prefix: str) -> list[Scene]:
    return [
        _pair(mask, "roads", mask.name[: -len(MASK_SUFFIX)], id_prefix)
        for mask in sorted(folder.glob("*" + MASK_SUFFIX))
    ]


def discover_scenes(root: Path) -> list[Scene]:
    """Every image/mask pair under ``root`` (see :class:`LandCover` for the accepted layouts)."""
    scenes: list[Scene] = []
    if (root / "dubai").is_dir():
        scenes += _dubai_scenes(root / "dubai", "dubai")
    if (root / "massachusetts_roads").is_dir():
        scenes += _road_scenes(root / "massachusetts_roads", "massachusetts_roads")
    if not scenes and root.is_dir():  # root is itself one layout's folder
        scenes = _dubai_scenes(root, root.name) or _road_scenes(root, root.name)
    if not scenes:
        raise FileNotFoundError(
            f"land cover: no scenes under {root}; expected dubai/tile_*/<name>.jpg + <name>{MASK_SUFFIX} "
            f"and/or massachusetts_roads/<id>.jpg + <id>{MASK_SUFFIX} (or one of those folders itself)"
        )
    return scenes


def _hash_unit(seed: int, key: str) -> float:
    """Deterministic value in [0, 1) for ``key`` (stable across Python runs, unlike ``hash``)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_groups(groups: list[str], seed: int, val_fraction: float) -> set[str]:
    """The validation groups: the ``max(1, round(n * val_fraction))`` groups with the smallest seeded hash.

    Ranking by hash keeps the split stable when groups are added (at most one group moves), while
    guaranteeing a non-empty validation set whenever there are at least two groups.
    """
    unique = sorted(set(groups))
    if len(unique) < 2:
        return set()
    k = min(len(unique) - 1, max(1, round(len(unique) * val_fraction)))
    return set(sorted(unique, key=lambda g: _hash_unit(seed, g))[:k])


def class_maps(scene: Scene) -> dict[str, np.ndarray]:
    """Boolean ``[H, W]`` mask of every class of the scene's layout, checked against the image size."""
    bands = read_bands(scene.mask_path)
    if scene.layout == "roads":
        masks = {"road": bands[0] == ROAD_VALUE}
    else:
        if bands.shape[0] < 3:
            raise InputError(f"{scene.mask_path}: Dubai masks are RGB colour-coded, found {bands.shape[0]} band(s)")
        rgb = (bands[0].astype(np.uint32) << 16) | (bands[1].astype(np.uint32) << 8) | bands[2]
        masks = {name: rgb == colour for name, colour in DUBAI_COLOURS.items()}
        known = sum(int(m.sum()) for m in masks.values()) + sum(int((rgb == c).sum()) for c in DUBAI_UNLABELED)
        if rgb.size - known > MAX_UNKNOWN_COLOUR_FRACTION * rgb.size:
            raise InputError(
                f"{scene.mask_path}: {1 - known / rgb.size:.0%} of pixels have colours outside the Dubai palette "
                f"{ {k: f'#{v:06X}' for k, v in DUBAI_COLOURS.items()} }"
            )
    image_hw = raster_size(scene.image_path)
    if bands.shape[1:] != image_hw:
        raise InputError(f"{scene.mask_path}: mask is {bands.shape[1:]} but the image is {image_hw} (H, W)")
    return masks


def class_mask(scene: Scene, class_name: str) -> np.ndarray:
    """Target of ``class_name`` in ``scene`` as ``uint8 [H, W]`` in {0, 1} (all zero if absent)."""
    return class_maps(scene)[class_name].astype(np.uint8)


def class_fractions(scene: Scene) -> dict[str, float]:
    """Fraction of the image's pixels in each class of the scene's layout."""
    return {name: float(m.mean()) for name, m in class_maps(scene).items()}


class LandCover(SampleList):
    """Generated referring/reasoning/absent questions on real land-cover scenes.

    On-disk layout (the shared real-data folder)::

        <root>/dubai/tile_*/<name>.jpg + <name>_mask.png           RGB mask, colours: DUBAI_COLOURS
        <root>/massachusetts_roads/<id>.jpg + <id>_mask.png        single band, 255 = road

    Either part may be missing, and ``root`` may also be one such folder itself (``tile_*``
    folders → Dubai layout, otherwise ``*_mask.png`` files → roads layout). Files are discovered,
    so other scenes in the same layout work unchanged.

    Split: ``"val"`` holds ``round(val_fraction × groups)`` (at least one) of each layout's groups
    (Dubai tile folders, Massachusetts image ids) chosen by seeded hash, ``"train"`` the rest and
    ``"all"`` every scene. With the defaults (seed 0, 0.2) that is one of six Dubai tiles and five
    of 23 Massachusetts images.

    Questions per scene, drawn with an RNG seeded by ``(seed, scene id)``:

    * every class covering at least ``min_fraction`` of the image: one ``"referring"`` expression
      and ``reasoning_per_class`` distinct ``"reasoning"`` questions; target = that class;
    * every class of the layout with no pixel at all: one ``"absent"`` question (a referring or
      reasoning phrasing of that class) with an empty target;
    * classes present below ``min_fraction`` get no question: too small to be a fair target, yet
      present, so not absent either.

    The scene masks are read once, when the sample list is first needed.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        *,
        seed: int = 0,
        val_fraction: float = 0.2,
        reasoning_per_class: int = 3,
        min_fraction: float = 0.005,
        include_absent: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"land-cover split must be one of {SPLITS}, got {split!r}")
        longest = min(len(q.reasoning) for q in CLASS_QUESTIONS.values())
        if not 0 <= reasoning_per_class <= longest:
            raise ConfigError(f"reasoning_per_class must be in [0, {longest}], got {reasoning_per_class}")
        self.split, self.seed = split, seed
        self.reasoning_per_class = reasoning_per_class
        self.min_fraction = min_fraction
        self.include_absent = include_absent
        scenes = discover_scenes(Path(root))
        if split != "all":
            val = {
                (layout, g)
                for layout in {s.layout for s in scenes}
                for g in split_groups([s.group for s in scenes if s.layout == layout], seed, val_fraction)
            }
            scenes = [s for s in scenes if ((s.layout, s.group) in val) == (split == "val")]
        self.scenes: list[Scene] = scenes

    @cached_property
    def samples(self) -> list[Sample]:
        """All samples, built on first use (reads every scene's mask once)."""
        return [sample for scene in self.scenes for sample in self.scene_samples(scene)]

    def scene_samples(self, scene: Scene) -> list[Sample]:
        """The questions of one scene (deterministic for a given seed)."""
        rng = random.Random(f"{self.seed}:{scene.id}")
        samples: list[Sample] = []
        for name, fraction in class_fractions(scene).items():
            table = CLASS_QUESTIONS[name]
            make = partial(self._sample, scene, name)
            if fraction >= self.min_fraction:
                samples.append(make("referring", 0, rng.choice(table.referring), None))
                for k, question in enumerate(rng.sample(table.reasoning, self.reasoning_per_class)):
                    samples.append(make("reasoning", k, question, table.answer))
            elif fraction == 0 and self.include_absent:
                samples.append(make("absent", 0, rng.choice(table.referring + table.reasoning), NO_TARGET_ANSWER))
        return samples

    @staticmethod
    def _sample(scene: Scene, class_name: str, kind: str, k: int, question: str, answer: str | None) -> Sample:
        return Sample(
            id=f"{scene.id}#{class_name}/{kind}{k}",
            image_path=scene.image_path,
            question=question,
            kind=kind,  # type: ignore[arg-type]  # one of the SampleKind literals by construction
            answer=answer,
            mask_loader=partial(class_mask, scene, class_name),
            class_name=class_name,
        )
