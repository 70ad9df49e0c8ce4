"""Datasets by name: the one registry that ``segearth train`` and ``segearth eval`` read.

Adding a dataset is its reader module (a class ``Reader(root, split, **options)`` with a ``samples``
list of :class:`~segearth.data.sample.Sample`) plus one :func:`register_dataset` call below; the
training config (``data.name``), the eval command's ``--dataset`` choices and its prompt template all
follow from the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from segearth.data import earthreason, landcover, multisource, refsegrs, rrsisd
from segearth.data.sample import Sample
from segearth.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset.

    Attributes:
        reader: ``reader(root, split, **options)`` -> an object with a ``samples`` list.
        task: the prompt template the official evaluation uses (``reasoning`` or ``referring``).
        splits: the split names the reader accepts.
        first_question_option: the reader's keyword for "only the first question (sentence) of each
            target", the official sample set; None when its samples have no such choice.
        augment: geometric augmentation (crops, turns, flips) keeps its answers true; not so where
            expressions say "the car on the left".
        classes: its samples carry a ``class_name`` (the oracle colour-prior baseline of eval).
    """

    name: str
    reader: type
    task: Literal["reasoning", "referring"]
    description: str
    splits: tuple[str, ...]
    first_question_option: str | None = None
    augment: bool = False
    classes: bool = False

    def samples(self, root: str | Path, split: str, first_question_only: bool = False) -> list[Sample]:
        """The samples of ``split`` under ``root`` (``first_question_only`` where the reader has the option)."""
        options: dict[str, Any] = {}
        if self.first_question_option is not None:
            options[self.first_question_option] = first_question_only
        return list(self.reader(root, split, **options).samples)


DATASETS: dict[str, DatasetSpec] = {}


class UnknownDatasetError(ConfigError):
    """A dataset name that is not registered."""


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` (each name once)."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The dataset called ``name``; :class:`UnknownDatasetError` lists the registered names."""
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


register_dataset(DatasetSpec(
    "earthreason", earthreason.EarthReason, "reasoning", "EarthReason reasoning segmentation",
    earthreason.SPLITS, first_question_option="first_question_only",
))
register_dataset(DatasetSpec(
    "rrsisd", rrsisd.RRSISD, "referring", "RRSIS-D referring segmentation", rrsisd.SPLITS,
    first_question_option="first_sentence_only", classes=True,
))
register_dataset(DatasetSpec(
    "refsegrs", refsegrs.RefSegRS, "referring", "RefSegRS referring segmentation (one phrase per sample)",
    refsegrs.SPLITS,
))
# Land cover mixes referring and reasoning questions; the reasoning template serves both.
register_dataset(DatasetSpec(
    "landcover", landcover.LandCover, "reasoning", "questions generated on real Dubai and Massachusetts "
    "land-cover masks", landcover.SPLITS, augment=True, classes=True,
))
register_dataset(DatasetSpec(
    "multisource", multisource.MultiSource, "reasoning", "question-bank questions on real imagery of many "
    "places and sensors (Dubai, Massachusetts, fAIr drone mosaics, Sentinel-2, NAIP, SpaceNet); val is "
    "cross-domain", multisource.SPLITS, augment=True, classes=True,
))
