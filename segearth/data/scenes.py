"""Labelled scenes: the one record every multi-source reader yields, and the questions drawn on it.

A :class:`LabelledScene` is an image (a file, or a window / band combination of a raster) with one
``uint8`` label map per class it labels: 1 = the class, 0 = not the class, :data:`UNKNOWN` = not
known (outside every polygon of a partial map, between a road centreline and the surely-off-road
distance, a spectral index between its thresholds). :func:`scene_questions` turns a scene into
:class:`~segearth.data.sample.Sample` records with phrasings from the question bank.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from segearth.data.questions import CLASS_QUESTIONS
from segearth.data.sample import NO_TARGET_ANSWER, UNKNOWN, Sample
from segearth.geo.read import Stretch, compute_stretch, read_window

LabelMaps = dict[str, np.ndarray]
#: A complete class with no pixel is "absent" only if almost every pixel is known (Dubai leaves a
#: few unlabelled pixels; a scene mostly unknown cannot say what is absent).
MIN_KNOWN_FOR_ABSENT = 0.95


@dataclass(frozen=True)
class LabelledScene:
    """One image with per-class label maps.

    Attributes:
        id: unique and stable, e.g. ``"sentinel2_brandenburg/r0c1/irrg"``.
        source: the source's name (breakdowns, weights), e.g. ``"fair_buildings"``.
        place: the unit of the train/validation split: scenes of one place never straddle it.
        image_path: the file the image comes from.
        image: zero-argument callable returning ``uint8 [H, W, 3]`` RGB.
        labels: zero-argument callable returning ``{class: uint8 [H, W]}`` for every class in
            ``classes``, values in {0, 1, UNKNOWN}.
        complete: classes labelled on every pixel, so that "no pixel" means absent (these and the
            weak classes get absent-class questions where almost every pixel is known).
        weak: classes whose labels come from a spectral index, not from people (model card).
    """

    id: str
    source: str
    place: str
    image_path: Path
    image: Callable[[], np.ndarray] = field(repr=False, compare=False)
    labels: Callable[[], LabelMaps] = field(repr=False, compare=False)
    classes: tuple[str, ...] = ()
    complete: tuple[str, ...] = ()
    weak: tuple[str, ...] = ()


@lru_cache(maxsize=4)
def _labels(scene: LabelledScene) -> LabelMaps:
    labels = scene.labels()
    missing = set(scene.classes) - set(labels)
    if missing:
        raise ValueError(f"scene {scene.id}: its reader returned no label map for {sorted(missing)}")
    return labels


def class_target(scene: LabelledScene, class_name: str) -> np.ndarray:
    """The label map of ``class_name`` (all zero for a complete class the reader did not return)."""
    return _labels(scene)[class_name]


def coverage(labels: LabelMaps) -> dict[str, float]:
    """Fraction of each class's *known* pixels that are the class (0 when none is known)."""
    out = {}
    for name, m in labels.items():
        known = int(np.count_nonzero(m != UNKNOWN))
        out[name] = int(np.count_nonzero(m == 1)) / known if known else 0.0
    return out


def scene_questions(scene: LabelledScene, *, seed: int, heldout: bool | None, reasoning_per_class: int,
                    min_fraction: float, min_known: float = 0.05, draw: int = 0) -> list[Sample]:
    """The questions of one scene.

    Every class covering at least ``min_fraction`` of its known pixels (and known on at least
    ``min_known`` of the image) gets one referring expression and ``reasoning_per_class`` reasoning
    questions; every *complete* or *weak* class (a spectral index labels every pixel it is sure of)
    with no pixel at all, known on at least :data:`MIN_KNOWN_FOR_ABSENT` of the image, gets one absent
    question (empty target).
    ``heldout``: False draws seen phrasings (training), True held-out ones, None both — every
    question twice, once seen and once held-out (validation, to compare the two).
    ``draw``: another draw of phrasings for the same questions (training's repeats); ids get ``~draw``.
    """
    labels = _labels(scene)
    rng = random.Random(f"{seed}:{scene.id}" + (f":{draw}" if draw else ""))
    variants = (False, True) if heldout is None else (heldout,)
    samples: list[Sample] = []
    for name, fraction in coverage(labels).items():
        table = CLASS_QUESTIONS[name]
        known = float(np.count_nonzero(labels[name] != UNKNOWN)) / labels[name].size
        for held in variants:
            phrasing = "heldout" if held else "seen"
            make = partial(_sample, scene, name, phrasing, draw)
            referring, reasoning = table.phrasings("referring", held), table.phrasings("reasoning", held)
            if fraction >= min_fraction and known >= min_known:
                samples.append(make("referring", 0, rng.choice(referring), None))
                for k, q in enumerate(rng.sample(reasoning, min(reasoning_per_class, len(reasoning)))):
                    samples.append(make("reasoning", k, q, table.answer))
            elif fraction == 0 and name in scene.complete + scene.weak and known >= MIN_KNOWN_FOR_ABSENT:
                samples.append(make("absent", 0, rng.choice(referring + reasoning), NO_TARGET_ANSWER))
    return samples


def _sample(scene: LabelledScene, class_name: str, phrasing: str, draw: int, kind: str, k: int, question: str,
            answer: str | None) -> Sample:
    return Sample(
        id=f"{scene.id}#{class_name}/{kind}{k}/{phrasing}" + (f"~{draw}" if draw else ""),
        image_path=scene.image_path,
        question=question,
        kind=kind,  # type: ignore[arg-type]  # one of the SampleKind literals by construction
        answer=answer,
        mask_loader=partial(class_target, scene, class_name),
        class_name=class_name,
        image_loader=scene.image,
        image_id=scene.id,
        source=scene.source,
        phrasing=phrasing,
    )


@lru_cache(maxsize=16)
def _stretch(path: str, bands: tuple[int, int, int]) -> Stretch:
    return compute_stretch(path, bands)


def render(path: Path, bands: tuple[int, int, int], window: Window | None = None) -> np.ndarray:
    """``bands`` of a raster as uint8 RGB, with the raster-wide percentile stretch ``predict`` applies."""
    stretch = _stretch(str(path), bands)
    if window is None:
        with rasterio.open(path) as ds:
            window = Window(0, 0, ds.width, ds.height)
    return read_window(path, window, stretch).image


def window_labels(labels: Callable[[], LabelMaps], window: Window) -> LabelMaps:
    """The label maps of ``labels()`` cut to ``window`` (copies: a chip never holds the whole scene's maps)."""
    rows, cols = window.toslices()
    return {name: m[rows, cols].copy() for name, m in labels().items()}


def index_labels(index: np.ndarray, positive: float, negative: float, greater: bool = True) -> np.ndarray:
    """A weak label from a spectral index: 1 beyond ``positive``, 0 beyond ``negative``, else unknown.

    ``greater``: the class has high index values (NDWI for water, NDVI for vegetation).
    """
    out = np.full(index.shape, UNKNOWN, np.uint8)
    if greater:
        out[index > positive] = 1
        out[index < negative] = 0
    else:
        out[index < positive] = 1
        out[index > negative] = 0
    return out


def excess_green(rgb: np.ndarray) -> np.ndarray:
    """Normalised excess green ``(2G - R - B) / (R + G + B)`` of ``uint8 [H, W, 3]``, float32, 0 on black.

    The visible-band vegetation index for imagery without a NIR band: green leaves and grass score
    high, roofs, soil, asphalt and water low (also in the shade, the ratio does not depend on brightness).
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    total = r + g + b
    return np.divide(2 * g - r - b, total, out=np.zeros_like(total), where=total != 0)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` in float32, 0 where both are 0."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total != 0)
