"""Ask many questions about one image, paying for the image once.

:meth:`Predictor.set_image` runs everything that does not depend on the question: the vision
encoder, the connector, the pixel decoder and — for a causal LLM — the key/value cache of the prompt
prefix that precedes the question (system text, image tokens, instruction). Each
:meth:`Predictor.predict` then embeds only the question, continues the LLM from the cache, and runs
the D-Projector and mask decoder. Because the LLM is causal and the mask depends only on the
description rows, the result equals the full uncached forward pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from .modeling.prompt import REFER_TOKEN, Task, build_prompt, description_ids, splice_sequence
from .modeling.segearth_r1 import ImageFeatures, SegEarthR1


@dataclass
class Prediction:
    question: str
    logits: torch.Tensor  # [S/4, S/4] mask logits on the model's letterboxed canvas (float32)

    def canvas_logits(self, size: int) -> torch.Tensor:
        """Logits bilinearly upsampled to the ``size x size`` canvas (the official output grid)."""
        up = torch.nn.functional.interpolate(self.logits[None, None], size=(size, size), mode="bilinear", align_corners=False)
        return up[0, 0]


class Predictor:
    """Question answering on a cached image for a :class:`SegEarthR1` model and its tokenizer."""

    def __init__(self, model: SegEarthR1, tokenizer, task: Task = "reasoning") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        # A model trained with one template (nano: answer-free) always uses it.
        self.task = model.cfg.prompt_task or task
        self._features: ImageFeatures | None = None
        self._prefix_cache = None
        template = build_prompt("x", tokenizer, self.task)
        self._ids = template.input_ids
        self._answer = template.answer_ids
        cut = self._ids.index(REFER_TOKEN)
        self._prefix_ids = self._ids[:cut]
        # The prefix cache is only valid for a causal LLM (a bidirectional one sees the question).
        self._use_cache = getattr(model.llm, "is_causal", True)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    def max_question_tokens(self) -> int:
        """Longest description the LLM's context allows with this prompt."""
        fixed = sum(i >= 0 for i in self._ids) + self.model.cfg.num_visual_tokens
        if self._answer is not None:
            fixed += len(self._answer)
        return self.model.cfg.llm.max_position_embeddings - fixed

    @torch.no_grad()
    def set_image(self, canvas: np.ndarray | torch.Tensor) -> None:
        """Cache an image already letterboxed to the model size: uint8/float RGB [S, S, 3] (0-255)."""
        x = torch.as_tensor(np.ascontiguousarray(canvas) if isinstance(canvas, np.ndarray) else canvas)
        if x.dim() != 3 or x.shape[-1] != 3 or x.shape[0] != self.image_size or x.shape[1] != self.image_size:
            raise ValueError(
                f"set_image expects an RGB canvas of shape [{self.image_size}, {self.image_size}, 3], "
                f"got {list(x.shape)}; letterbox the image first (segearth.geo.letterbox)"
            )
        images = self.model.normalize(x.permute(2, 0, 1)[None].to(self.model.device))
        self._features = self.model.encode_image(images)
        self._prefix_cache = None
        if self._use_cache:
            ids = torch.tensor(self._prefix_ids, device=self.model.device)
            embeds, _, _ = splice_sequence(
                ids, None, self._features.visual_tokens[0], None, None, self.model.llm.embed, require_description=False
            )
            _, self._prefix_cache = self.model.llm(embeds[None], None, self.model.llm.new_cache())

    def _check_question(self, question: str) -> list[int]:
        if not question or not question.strip():
            raise ValueError("the question is empty")
        ids = description_ids(question, self.tokenizer)  # the template was tokenised once, in __init__
        limit = self.max_question_tokens()
        if len(ids) > limit:
            raise ValueError(f"the question is {len(ids)} tokens long; this model's context allows at most {limit}")
        return ids

    @torch.no_grad()
    def predict(self, question: str) -> Prediction:
        """Mask logits for one question about the cached image."""
        if self._features is None:
            raise RuntimeError("call set_image() before predict()")
        refer = torch.tensor(self._check_question(question), device=self.model.device)
        if self._prefix_cache is None:
            return Prediction(question, self._uncached(refer))
        cache = copy.deepcopy(self._prefix_cache)
        embeds = self.model.llm.embed(refer)[None]
        hidden, _ = self.model.llm(embeds, None, cache)
        flags = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        _, _, masks = self.model.decode(self._features, hidden, flags)
        return Prediction(question, masks[-1][0, 0].float())

    def _uncached(self, refer: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([self._ids], device=self.model.device)
        answer = [torch.tensor(self._answer, device=refer.device)] if self._answer is not None else None
        out = self.model(ids, [refer], image_features=self._features, answer_ids=answer)
        return out.mask_logits[0, 0].float()

    @torch.no_grad()
    def predict_uncached(self, question: str) -> Prediction:
        """The full forward pass (whole prompt, no prefix cache): the reference for :meth:`predict`."""
        if self._features is None:
            raise RuntimeError("call set_image() before predict()")
        return Prediction(question, self._uncached(torch.tensor(self._check_question(question), device=self.model.device)))
