"""The interface every language model of SegEarth-R1 implements, and what each one can do.

The model, the predictor and training talk to ``model.llm`` only through :class:`LanguageModel`:
``embed`` token ids, run ``forward`` on spliced input embeddings (optionally continuing a key/value
cache), and the capability flags below. A new LLM subclasses :class:`LanguageModel` and states its
flags explicitly (they have no defaults), so a bidirectional model can never silently get the causal
prefix cache of :class:`segearth.predictor.Predictor`.

This module imports no LLM implementation: :func:`language_model_class` lets configuration checks
ask what an LLM can do before anything is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import UnsupportedError

if TYPE_CHECKING:
    from ..config import MiniLMConfig, PhiConfig


class LanguageModel(nn.Module, ABC):
    """A language model run on spliced input embeddings, returning its last hidden states.

    Capabilities (class attributes, declared by every implementation):

    * ``is_causal``: no position sees later positions, so text appended after the description
      (an answer, padding) does not change the description's hidden states.
    * ``supports_prefix_cache``: :meth:`new_cache` / :meth:`cache_prefix` exist and ``forward``
      continues a cache (only meaningful for a causal model).
    * ``has_lm_head``: :meth:`logits` gives next-token logits (the LM loss of training).
    * ``supports_lora``: :meth:`lora_target` is the module LoRA adapters are injected into.
    * ``supports_gradient_checkpointing``: :meth:`enable_gradient_checkpointing` works.
    """

    is_causal: ClassVar[bool]
    supports_prefix_cache: ClassVar[bool]
    has_lm_head: ClassVar[bool]
    supports_lora: ClassVar[bool]
    supports_gradient_checkpointing: ClassVar[bool]

    _CAPABILITIES = ("is_causal", "supports_prefix_cache", "has_lm_head", "supports_lora",
                     "supports_gradient_checkpointing")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "supports_prefix_cache", False) and not getattr(cls, "is_causal", False):
            raise TypeError(f"{cls.__name__}: a prefix cache is only valid for a causal language model")

    def __init__(self) -> None:
        super().__init__()
        # Every flag must be stated by the implementation: no default can be the wrong one.
        missing = [name for name in self._CAPABILITIES if not isinstance(getattr(type(self), name, None), bool)]
        if missing:
            raise TypeError(f"{type(self).__name__} must declare {', '.join(missing)} (see LanguageModel)")

    @abstractmethod
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> input embeddings [..., D] (before any position information)."""

    @abstractmethod
    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """inputs_embeds [B, L, D], attention_mask [B, L] (1 = valid) -> (last hidden states [B, L, D], cache).

        ``cache`` (only with ``supports_prefix_cache``) continues after the cached positions and is
        returned; models without a cache return None.
        """

    @abstractmethod
    def reset_rotary(self) -> None:
        """Rebuild the buffers not saved in checkpoints (position tables), on the current device."""

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, V] (``has_lm_head``)."""
        raise NotImplementedError(f"{type(self).__name__} has no language-model head")

    def new_cache(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None, batch: int = 1) -> Any:
        """An empty key/value cache, or one holding ``prefix`` repeated ``batch`` times (``supports_prefix_cache``)."""
        raise NotImplementedError(f"{type(self).__name__} has no key/value cache")

    def cache_prefix(self, cache: Any, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``length`` positions of every layer's keys and values (``supports_prefix_cache``)."""
        raise NotImplementedError(f"{type(self).__name__} has no key/value cache")

    def lora_target(self) -> nn.Module:
        """The module whose linear layers take LoRA adapters (``supports_lora``); adapters are injected in place."""
        raise UnsupportedError(f"{type(self).__name__} does not support LoRA")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute layer activations in the backward pass (``supports_gradient_checkpointing``)."""
        raise UnsupportedError(f"{type(self).__name__} does not support gradient checkpointing")


def language_model_class(cfg: PhiConfig | MiniLMConfig) -> type[LanguageModel]:
    """The :class:`LanguageModel` subclass an LLM config builds (imported here, nothing is built)."""
    if cfg.kind == "phi":
        from .llm import PhiLanguageModel

        return PhiLanguageModel
    from .minilm import MiniLMLanguageModel

    return MiniLMLanguageModel
