"""Datasets for training and the resumable, seeded batch order.

The order is a pure function of ``(seed, epoch)``: epoch ``e`` visits ``randperm(n, seed + e)`` in
global batches of ``batch_size x world_size`` samples (the incomplete tail is dropped, as the
official run does), and process ``r`` takes slice ``r`` of each global batch. So a run resumed at
micro-batch ``m`` sees exactly the batches an uninterrupted run would, with any number of workers,
and the data-order state in a checkpoint is just ``m`` (with its epoch and position, for people).
With ``with_epoch`` the sampler yields ``(index, epoch)`` pairs instead of indices, for datasets that
re-draw a sample on every visit (:class:`~segearth.train.augment.AugmentedDataset`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..data.registry import get_dataset
from ..data.sample import Sample
from ..errors import ConfigError, InputError
from ..metrics import letterbox_mask
from .collate import Example, prepare_example
from .config import DataConfig


def build_samples(cfg: DataConfig, split: str, limit: int | None = None) -> Sequence[Sample]:
    """The samples of ``split`` of the configured dataset (first ``limit`` only, when given)."""
    samples = get_dataset(cfg.name).samples(cfg.root, split, cfg.first_question_only)[:limit]
    if not samples:
        raise InputError(f"{cfg.name} split {split!r} under {cfg.root} has no samples")
    return samples


class LetterboxedDataset(Dataset):
    """Samples decoded and letterboxed on access; optionally cached (images by file, masks by sample).

    Many questions share one image (land cover: ~14 per scene), so the image cache is keyed by path.
    """

    def __init__(self, samples: Sequence[Sample], size: int, cache: bool = False) -> None:
        self.samples, self.size, self.cache = samples, size, cache
        self._images: dict[str, Example] = {}
        self._examples: dict[int, Example] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Example:
        if not self.cache:
            return prepare_example(self.samples[index], index, self.size)
        if index not in self._examples:
            sample = self.samples[index]
            key = sample.image_key
            if key in self._images:
                # Same image, new question: reuse the canvas, decode only the mask.
                base = self._images[key]
                ex = Example(index, sample.id, base.image, letterbox_mask(sample.load_mask(), self.size),
                             sample.question, sample.answer, sample.kind)
            else:
                ex = prepare_example(sample, index, self.size)
                self._images[key] = ex
            self._examples[index] = ex
        return self._examples[index]


@dataclass(frozen=True)
class DataPosition:
    """Where micro-batch ``micro`` lies in the epoch sequence."""

    epoch: int
    position: int  # micro-batch index inside the epoch


class BatchOrder:
    """Batch sampler over micro-batches ``start .. stop-1`` of the seeded, sharded sequence."""

    def __init__(
        self, num_samples: int, batch_size: int, world_size: int, rank: int, seed: int, start: int, stop: int,
        with_epoch: bool = False,
    ) -> None:
        self.n, self.batch_size, self.world, self.rank, self.seed = num_samples, batch_size, world_size, rank, seed
        self.with_epoch = with_epoch
        self.per_epoch = num_samples // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ConfigError(
                f"{num_samples} training samples are fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.start, self.stop = start, stop

    def locate(self, micro: int) -> DataPosition:
        return DataPosition(micro // self.per_epoch, micro % self.per_epoch)

    def permutation(self, epoch: int) -> torch.Tensor:
        # A private generator: the order never depends on (or consumes) the global RNG.
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        for micro in range(self.start, self.stop):
            where = self.locate(micro)
            if where.epoch != perm_epoch:
                perm, perm_epoch = self.permutation(where.epoch), where.epoch
            assert perm is not None  # drawn at the first step: epochs start at 0
            begin = (where.position * self.world + self.rank) * self.batch_size
            indices = perm[begin : begin + self.batch_size].tolist()
            yield [(i, where.epoch) for i in indices] if self.with_epoch else indices
