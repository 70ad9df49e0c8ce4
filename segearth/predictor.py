"""Ask many questions about one image, paying for the image once (the SAM ``Predictor`` pattern).

:meth:`Predictor.set_image` takes the user's RGB image as it is (any size), letterboxes it onto the
model's square canvas and runs everything that does not depend on the question: the vision encoder,
the connector and the pixel decoder. Each :meth:`Predictor.predict` then runs the question through the LLM
and the D-Projector and mask decoder (:meth:`SegEarthR1.decode`, the one question path shared with the full
forward pass). For a causal LLM the first question runs
after the prompt prefix (system text, image tokens, instruction) in one pass, whose key/value cache of
the prefix is kept; later questions continue from it, several at once with :meth:`predict_batch`.
Because the LLM is causal and the mask depends only on the description rows, the result equals the
full uncached forward pass (:meth:`Predictor.predict_uncached`, tested).

A :class:`Prediction` holds the model's low-resolution logits on its canvas and maps them back to
the image's own grid on demand; its :class:`Scores` let a caller treat a weak answer as "not here".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
import torch

from .errors import InputError
from .geo.letterbox import Letterbox, letterbox
from .modeling.prompt import REFER_TOKEN, Task, build_prompt, description_ids, splice_sequence
from .modeling.segearth_r1 import ImageFeatures, SegEarthR1


class NonFiniteOutputError(InputError):
    """The model produced NaN/Inf logits: a broken checkpoint or an unsuitable dtype, never "nothing here"."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits; NaN (unpredicted) stays NaN. The one sigmoid of the pipeline."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float32)))).astype(np.float32)


@dataclass(frozen=True)
class Scores:
    """How confident an answer is; ``target_fraction == 0`` means the model found nothing."""

    target_fraction: float  # share of the (valid) pixels predicted as target
    mean_probability: float  # mean probability inside the predicted target (0 when it is empty)
    max_probability: float  # highest probability anywhere: a threshold for "is it here at all?"

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> Scores:
        """Scores of a logit map; NaN pixels (nodata, unpredicted) are left out."""
        values = np.asarray(logits, dtype=np.float32)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 0.0, 0.0)
        target = values > 0
        mean = float(sigmoid(values[target]).mean()) if target.any() else 0.0
        # The sigmoid is monotone: the highest probability is that of the highest logit (no full map of
        # probabilities for a scene of hundreds of megapixels, nor for every answer `segearth eval` scores).
        return cls(float(target.mean()), mean, float(sigmoid(values.max())))

    def present(self, threshold: float | None) -> bool:
        """Whether the answer says "here": some target pixel, and ``max_probability`` at least ``threshold``
        (None: any target pixel, the official rule). Below it every output is empty: "not here"."""
        return self.target_fraction > 0 and (threshold is None or self.max_probability >= threshold)

    def as_dict(self) -> dict[str, float]:
        return {"target_fraction": self.target_fraction, "mean_probability": self.mean_probability,
                "max_probability": self.max_probability}


@dataclass
class Prediction:
    """One answer: the decoder's logits on the letterboxed canvas and the way back to the image."""

    question: str
    low_res_logits: torch.Tensor  # [S/4, S/4] float32 on the model's letterboxed canvas
    box: Letterbox  # where the image sits on the canvas

    @cached_property
    def logits(self) -> torch.Tensor:
        """[H, W] float32 logits on the image's own grid (padding cropped, bilinear)."""
        return self.box.unletterbox(self.low_res_logits)

    @property
    def probabilities(self) -> np.ndarray:
        return sigmoid(self.logits.numpy())

    @property
    def mask(self) -> np.ndarray:
        """[H, W] bool: the target region (logit > 0, the official threshold)."""
        return self.logits.numpy() > 0

    @cached_property
    def scores(self) -> Scores:
        return Scores.from_logits(self.logits.numpy())

    def canvas_logits(self, size: int | None = None) -> torch.Tensor:
        """Logits bilinearly upsampled to the ``size x size`` canvas (the official output grid)."""
        size = size or self.box.size
        up = torch.nn.functional.interpolate(
            self.low_res_logits[None, None], size=(size, size), mode="bilinear", align_corners=False
        )
        return up[0, 0]


class ImagePredictor(Protocol):
    """What the raster pipeline, the evaluation and :class:`~segearth.api.SegEarth` ask of a predictor
    (:class:`Predictor`, or a test stub): encode one image, then answer questions about it."""

    @property
    def image_size(self) -> int: ...

    @property
    def presence_threshold(self) -> float | None: ...

    def set_image(self, image: np.ndarray) -> None: ...

    def predict(self, question: str) -> Prediction: ...


class Predictor:
    """Question answering on a cached image for a :class:`SegEarthR1` model and its tokenizer."""

    def __init__(self, model: SegEarthR1, tokenizer, task: Task = "reasoning",
                 presence_threshold: float | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        # "Is it here?" (Scores.present): the caller's threshold, else the model's calibrated one
        self._presence_threshold = presence_threshold
        # A model trained with one template (nano: answer-free) always uses it.
        self.task = model.cfg.prompt_task or task
        self._features: ImageFeatures | None = None
        self._box: Letterbox | None = None
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        template = build_prompt("x", tokenizer, self.task)
        self._ids = template.input_ids
        self._answer = template.answer_ids
        cut = self._ids.index(REFER_TOKEN)
        self._prefix_ids = self._ids[:cut]
        # The prefix cache is only valid for a causal LLM (a bidirectional one sees the question).
        self._use_cache = model.llm.supports_prefix_cache

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def presence_threshold(self) -> float | None:
        """Answers whose ``max_probability`` is below this are "not here"; None: the official rule alone."""
        if self._presence_threshold is not None:
            return self._presence_threshold
        return self.model.cfg.presence_threshold

    @property
    def letterbox(self) -> Letterbox | None:
        """Placement of the current image on the canvas (None before :meth:`set_image`)."""
        return self._box

    def max_question_tokens(self) -> int:
        """Longest description the LLM's context allows with this prompt."""
        fixed = sum(i >= 0 for i in self._ids) + self.model.cfg.num_visual_tokens
        if self._answer is not None:
            fixed += len(self._answer)
        return self.model.cfg.llm.max_position_embeddings - fixed

    @torch.no_grad()
    def set_image(self, image: np.ndarray | torch.Tensor) -> None:
        """Cache an RGB image of any size: uint8 ``[H, W, 3]`` (letterboxed onto the canvas here)."""
        array = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise InputError(f"set_image expects an RGB image of shape [H, W, 3], got {list(array.shape)}")
        if array.dtype != np.uint8:
            raise InputError(f"set_image expects uint8 RGB (0-255), got {array.dtype}; "
                             "segearth.geo.read stretches other dtypes")
        canvas, self._box = letterbox(array, self.image_size)
        x = torch.from_numpy(canvas)
        images = self.model.normalize(x.permute(2, 0, 1)[None].to(self.model.device))
        self._features = self.model.encode_image(images)
        self._prefix_kv = None  # built by the first question, in the same LLM pass

    def _check_question(self, question: str) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError("call set_image() before predict()")
        if not question or not question.strip():
            raise InputError("the question is empty")
        ids = description_ids(question, self.tokenizer)  # the template was tokenised once, in __init__
        limit = self.max_question_tokens()
        if len(ids) > limit:
            raise InputError(f"the question is {len(ids)} tokens long; this model's context allows at most {limit}")
        return torch.tensor(ids, device=self.model.device)

    def _prediction(self, question: str, low_res: torch.Tensor) -> Prediction:
        logits = low_res.float().cpu()
        if not torch.isfinite(logits).all():
            # NaN logits would read as "nothing here": a broken model must never look like an answer.
            raise NonFiniteOutputError(
                "the model produced non-finite logits (NaN/Inf): its weights or the chosen --dtype are broken"
            )
        assert self._box is not None
        return Prediction(question, logits, self._box)

    @torch.no_grad()
    def predict(self, question: str) -> Prediction:
        """The answer to one question about the cached image."""
        return self.predict_batch([question])[0]

    @torch.no_grad()
    def predict_batch(self, questions: list[str]) -> list[Prediction]:
        """Answers to several questions about the cached image, run through the LLM together."""
        refers = [self._check_question(q) for q in questions]
        if not self._use_cache:
            return [self._prediction(q, m) for q, m in zip(questions, self._uncached(refers), strict=True)]
        out: list[Prediction] = []
        if self._prefix_kv is None:  # the first question also builds the prefix cache: one LLM pass, as uncached
            out.append(self._prediction(questions[0], self._first_with_prefix(refers[0])))
            questions, refers = questions[1:], refers[1:]
        if refers:
            out += [self._prediction(q, m) for q, m in zip(questions, self._continue_prefix(refers), strict=True)]
        return out

    def _image_features(self) -> ImageFeatures:
        assert self._features is not None  # every question is checked first (_check_question)
        return self._features

    def _decode(self, hidden: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Description rows of the LLM output -> [B, S/4, S/4] mask logits (the model's question path)."""
        cached = self._image_features()
        features = cached.repeat(hidden.shape[0]) if hidden.shape[0] > 1 else cached
        _, _, masks = self.model.decode(features, hidden, flags)
        return masks[-1][:, 0]

    def _first_with_prefix(self, refer: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(self._prefix_ids, device=self.model.device)
        llm = self.model.llm
        prefix, _, _ = splice_sequence(
            ids, None, self._image_features().visual_tokens[0], None, None, llm.embed, require_description=False
        )
        embeds = torch.cat((prefix, llm.embed(refer)))[None]
        hidden, cache = llm(embeds, None, llm.new_cache())
        assert cache is not None  # returned when one is passed
        self._prefix_kv = llm.cache_prefix(cache, prefix.shape[0])
        question = hidden[:, prefix.shape[0]:]
        return self._decode(question, torch.ones(question.shape[:2], dtype=torch.bool, device=question.device))[0]

    def _continue_prefix(self, refers: list[torch.Tensor]) -> torch.Tensor:
        # Right padding is safe without an attention mask: in a causal LLM no description row sees the pads
        # after it, and only description rows reach the decoder.
        longest = max(len(r) for r in refers)
        llm = self.model.llm
        embeds = torch.stack([torch.nn.functional.pad(llm.embed(r), (0, 0, 0, longest - len(r)))
                              for r in refers])
        flags = torch.arange(longest, device=embeds.device)[None] < torch.tensor([len(r) for r in refers],
                                                                                device=embeds.device)[:, None]
        hidden, _ = llm(embeds, None, llm.new_cache(self._prefix_kv, len(refers)))
        return self._decode(hidden, flags)

    def _uncached(self, refers: list[torch.Tensor]) -> torch.Tensor:
        n = len(refers)
        ids = torch.tensor([self._ids] * n, device=self.model.device)
        answer = [torch.tensor(self._answer, device=self.model.device)] * n if self._answer is not None else None
        cached = self._image_features()
        features = cached.repeat(n) if n > 1 else cached
        out = self.model(ids, refers, image_features=features, answer_ids=answer)
        return out.mask_logits[:, 0]

    @torch.no_grad()
    def predict_uncached(self, question: str) -> Prediction:
        """The full forward pass (whole prompt, no prefix cache): the reference for :meth:`predict`."""
        return self._prediction(question, self._uncached([self._check_question(question)])[0])
