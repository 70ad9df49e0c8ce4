"""From dataset :class:`~segearth.data.Sample` records to model-ready training batches.

Per sample (in the data-loader workers): the image is letterboxed to the model's input side
(:func:`segearth.geo.letterbox`, bilinear, zero padding) and the target with
:func:`segearth.metrics.letterbox_mask` (nearest, zero padding) — the same canvases the paper's
metrics use. Images stay uint8 here; ``model.normalize`` runs on the training device, which keeps
host-to-device copies four times smaller.

Prompts (spec §4.4): a sample with an answer (EarthReason, land-cover reasoning/absent questions)
uses the ``reasoning`` template with the answer spliced in and LM labels; one without (RRSIS-D,
RefSegRS, land-cover referring expressions) uses the ``referring`` template and contributes no
LM loss (its labels are all ignored).

Mixed batches. The official loader asserts that a batch holds one task. We allow mixed batches
instead: each sample keeps its own template, and the LM loss is the token-mean over the
supervised tokens of the batch, i.e. over its reasoning samples only. On a single-task dataset this
is exactly the official loss; on the land-cover set it avoids a task-grouped sampler whose batch
order would depend on the task mix.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from ..data.sample import Sample
from ..errors import ConfigError
from ..geo.letterbox import letterbox
from ..metrics import letterbox_mask
from ..modeling.prompt import IGNORE_INDEX, Task, Tokenizer, build_prompt


def prompt_task(answer: str | None) -> Task:
    """Prompt template of a sample: ``reasoning`` when it has an answer to teach, else ``referring``."""
    return "referring" if answer is None else "reasoning"


@dataclass
class Example:
    """One letterboxed sample, as produced by the dataset (picklable, uint8)."""

    index: int
    id: str
    image: np.ndarray  # [S, S, 3] uint8 letterboxed canvas
    mask: np.ndarray  # [S, S] uint8 {0, 1} letterboxed target
    question: str
    answer: str | None
    kind: str


def prepare_example(sample: Sample, index: int, size: int) -> Example:
    """Decode and letterbox one sample to the ``size`` x ``size`` canvas."""
    canvas, _ = letterbox(sample.load_image(), size)
    mask = letterbox_mask(sample.load_mask(), size)
    return Example(index, sample.id, canvas, mask, sample.question, sample.answer, sample.kind)


@dataclass
class Batch:
    """A collated training/validation batch. Tensors are on the CPU until :meth:`to`."""

    images: torch.Tensor  # [B, 3, S, S] uint8 (normalised on the device)
    masks: torch.Tensor  # [B, 1, S, S] float {0, 1}
    input_ids: torch.Tensor  # [B, L] long, placeholders negative, right-padded with the pad id
    attention_mask: torch.Tensor  # [B, L] bool, True on real ids (placeholders included)
    labels: torch.Tensor  # [B, L] long, IGNORE_INDEX on padding / unsupervised positions
    refer_ids: list[torch.Tensor]
    answer_ids: list[torch.Tensor | None]
    indices: list[int]
    ids: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor moved to ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
            elif f.name in ("refer_ids", "answer_ids"):
                value = [v.to(device, non_blocking=True) if v is not None else None for v in value]
            moved[f.name] = value
        return Batch(**moved)


class Collator:
    """``list[Example] -> Batch``: builds the prompts and pads them (picklable for workers)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = 2048, task: Task | None = None) -> None:
        """``task`` forces one template for every sample (a model trained with one, e.g. nano's
        answer-free template, which a bidirectional LLM needs); None chooses per sample."""
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            raise ConfigError("the tokenizer has no pad token; SegEarth-R1 tokenizers define [PAD]")
        self.tokenizer = tokenizer
        self.pad_id = int(pad)
        self.max_length = max_length  # official model_max_length, applied before splicing
        self.task = task

    def __call__(self, examples: list[Example]) -> Batch:
        prompts = []
        for ex in examples:
            task = self.task or prompt_task(ex.answer)
            answer = ex.answer if task == "reasoning" else None
            prompts.append(build_prompt(ex.question, self.tokenizer, task, answer=answer, with_labels=True))
        ids = [p.input_ids[: self.max_length] for p in prompts]
        # Referring prompts carry no LM supervision (spec §4.4): their labels are ignored entirely.
        labels = [
            (p.labels or [])[: self.max_length] if p.answer_ids is not None else [IGNORE_INDEX] * len(i)
            for p, i in zip(prompts, ids, strict=True)
        ]
        longest = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), longest), dtype=torch.bool)
        label_t = torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.long)
        for row, (i, lab) in enumerate(zip(ids, labels, strict=True)):
            input_ids[row, : len(i)] = torch.tensor(i)
            attention[row, : len(i)] = True
            label_t[row, : len(lab)] = torch.tensor(lab)
        images = torch.from_numpy(np.stack([ex.image for ex in examples])).permute(0, 3, 1, 2).contiguous()
        masks = torch.from_numpy(np.stack([ex.mask for ex in examples])).unsqueeze(1).float()
        return Batch(
            images=images,
            masks=masks,
            input_ids=input_ids,
            attention_mask=attention,
            labels=label_t,
            refer_ids=[torch.tensor(p.refer_ids) for p in prompts],
            answer_ids=[torch.tensor(p.answer_ids) if p.answer_ids is not None else None for p in prompts],
            indices=[ex.index for ex in examples],
            ids=[ex.id for ex in examples],
            kinds=[ex.kind for ex in examples],
        )
