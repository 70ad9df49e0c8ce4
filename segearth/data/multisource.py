"""Questions on real imagery from many places and sensors: the built-in model's training set.

Sources (all optional except that a split must end up non-empty), under ``root`` =
``../shared/data``:

==========================  ================================  ===========================  =====================
source                      reader                            classes                      split
==========================  ================================  ===========================  =====================
``dubai``                   :mod:`segearth.data.landcover`    building, land, road,        land cover's split
                                                              vegetation, water            (val: ``tile_6``)
``massachusetts_roads``     :mod:`segearth.data.landcover`    road                         land cover's split
``fair_buildings``          :mod:`segearth.data.fair_buildings`  building, vegetation    val: Kampala
                                                              (weak excess green)
``sentinel2_brandenburg``   :mod:`segearth.data.sentinel2`    farmland, trees, grass,      val: the eastern
 (+ ``_irrg`` false colour)                                   water (weak NDWI),           384 px
                                                              vegetation (weak NDVI)
``naip``, ``spacenet_pan``  :mod:`segearth.data.geotiff_samples`  water, vegetation (weak),  val only
                                                              building
==========================  ================================  ===========================  =====================

Splits: ``train`` = the training places of every source, each repeated by :data:`TRAIN_WEIGHTS`
(and absent-class questions by :data:`ABSENT_WEIGHT`; repeats are re-augmented on every visit and
ask with another draw of the bank's seen phrasings, so a weight is a sampling rate); ``val`` = the
**cross-domain** validation: only places and sensors never seen in training (Kampala, the east of
the Sentinel-2 scene, NAIP, SpaceNet), every question asked once with a seen and once with a
held-out phrasing; ``val_indomain`` = the land-cover validation scenes (Dubai ``tile_6``, five
Massachusetts images) with the same questions. Questions come from the question bank
(:mod:`segearth.data.questions`); see :func:`segearth.data.scenes.scene_questions`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property, partial
from itertools import zip_longest
from pathlib import Path

import numpy as np

from segearth.data import landcover
from segearth.data.fair_buildings import VAL_CITIES, fair_scenes
from segearth.data.geotiff_samples import geotiff_scenes
from segearth.data.io import read_rgb
from segearth.data.sample import UNKNOWN, Sample, SampleList
from segearth.data.scenes import LabelledScene, LabelMaps, scene_questions
from segearth.data.sentinel2 import sentinel2_scenes
from segearth.errors import ConfigError

SPLITS = ("train", "val", "val_indomain")
#: Sampling rate per source in training (samples are repeated this many times per epoch).
TRAIN_WEIGHTS: dict[str, int] = {
    "dubai": 1, "massachusetts_roads": 3, "fair_buildings": 2,
    "sentinel2_brandenburg": 2, "sentinel2_brandenburg_irrg": 1,
}
#: Absent-class questions are rare (a class is absent from a whole scene only now and then), yet
#: "not here" is an answer the model must learn to give: they are sampled this much more often.
ABSENT_WEIGHT = 4


def _landcover_labels(scene: landcover.Scene) -> LabelMaps:
    maps = landcover.class_maps(scene)
    if scene.layout != "dubai":
        return {name: m.astype(np.uint8) for name, m in maps.items()}
    labelled = np.logical_or.reduce(list(maps.values()))
    return {name: np.where(labelled, m, UNKNOWN).astype(np.uint8) for name, m in maps.items()}


def landcover_scenes(root: Path, split: str) -> list[LabelledScene]:
    """Dubai and Massachusetts scenes of the land-cover ``split`` (unlabelled Dubai pixels unknown)."""
    try:
        scenes = landcover.LandCover(root, split).scenes
    except FileNotFoundError:
        return []
    out = []
    for s in scenes:
        source = "dubai" if s.layout == "dubai" else "massachusetts_roads"
        out.append(LabelledScene(
            id=s.id, source=source, place=f"{source}/{s.group}", image_path=s.image_path,
            image=partial(read_rgb, s.image_path), labels=partial(_landcover_labels, s),
            classes=s.classes, complete=s.classes,
        ))
    return out


def discover(root: Path, split: str) -> list[LabelledScene]:
    """The scenes of ``split`` from every source folder present under ``root``."""
    scenes: list[LabelledScene] = []
    if split in ("train", "val_indomain"):
        scenes += landcover_scenes(root, "train" if split == "train" else "val")
    if split == "val_indomain":
        return scenes
    if (root / "fair_buildings").is_dir():
        fair = fair_scenes(root / "fair_buildings")
        scenes += [s for s in fair if (s.place in VAL_CITIES) == (split == "val")]
    if (root / "sentinel2_brandenburg").is_dir():
        scenes += sentinel2_scenes(root / "sentinel2_brandenburg", split)
    if split == "val" and (root / "geotiff").is_dir():
        scenes += geotiff_scenes(root / "geotiff")
    return scenes


def _interleave_sources(samples: list[Sample]) -> list[Sample]:
    """Round-robin over sources, so that any prefix (training's quick validation) covers them all."""
    by_source: dict[str, list[Sample]] = {}
    for s in samples:
        by_source.setdefault(s.source or "", []).append(s)
    return [s for group in zip_longest(*by_source.values()) for s in group if s is not None]


class MultiSource(SampleList):
    """Bank questions on the labelled scenes of every source (see the module docstring).

    Args:
        root: the shared data folder (holding ``dubai/``, ``fair_buildings/``, ...).
        split: ``train``, ``val`` (cross-domain) or ``val_indomain``.
        reasoning_per_class: reasoning questions per present class and phrasing set.
        min_fraction: a class is asked about when it covers this share of its known pixels.
    """

    def __init__(self, root: str | Path, split: str = "train", *, seed: int = 0, reasoning_per_class: int = 2,
                 min_fraction: float = 0.005,
                 weights: dict[str, int] | None = None) -> None:
        if split not in SPLITS:
            raise ConfigError(f"multisource split must be one of {SPLITS}, got {split!r}")
        self.split, self.seed = split, seed
        self.reasoning_per_class, self.min_fraction = reasoning_per_class, min_fraction
        self.weights = TRAIN_WEIGHTS if weights is None else weights
        self.scenes = discover(Path(root), split)
        if not self.scenes:
            raise FileNotFoundError(
                f"multisource: no scenes for split {split!r} under {root}; expected some of dubai/, "
                "massachusetts_roads/, fair_buildings/, sentinel2_brandenburg/, geotiff/ (../shared/data)"
            )

    @cached_property
    def samples(self) -> list[Sample]:
        """All samples, built on first use (reads every scene's labels once)."""
        draw: Callable[..., list[Sample]] = partial(
            scene_questions, seed=self.seed, heldout=None if self.split != "train" else False,
            reasoning_per_class=self.reasoning_per_class, min_fraction=self.min_fraction)
        if self.split != "train":
            return _interleave_sources([s for scene in self.scenes for s in draw(scene)])
        # Repeat r of a question is draw r of its phrasings: many wordings per scene and class rather
        # than one memorised with it.
        repeated = []
        for scene in self.scenes:
            weight = self.weights.get(scene.source, 1)
            for r in range(weight * ABSENT_WEIGHT):
                repeated += [s for s in draw(scene, draw=r)
                             if r < weight * (ABSENT_WEIGHT if s.kind == "absent" else 1)]
        return repeated


