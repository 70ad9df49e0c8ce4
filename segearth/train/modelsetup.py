"""Building the model to train: weights, tokenizer, freezing policy, LoRA, and the loss wrapper.

:class:`TrainingModule` puts the forward pass *and* the official losses in one ``forward``, so the
engine (DDP, FSDP, DeepSpeed) wraps a single module and every parameter that takes part in the loss
— including ``lm_head``, which the model's own ``forward`` never calls — is used inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..checkpoint import load_model_and_tokenizer, save_pretrained
from ..modeling.prompt import IGNORE_INDEX, Tokenizer
from ..modeling.segearth_r1 import SegEarthR1
from ..presets import get_preset, preset_names
from .config import FreezeConfig, LoraConfig, ModelConfig
from .losses import lm_loss, mask_loss_terms, total_loss

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer


def build_model(cfg: ModelConfig, seed: int) -> tuple[SegEarthR1, Tokenizer]:
    """``(model in fp32, tokenizer)`` of a preset (random initialisation, seeded so every process
    agrees) or of a checkpoint folder."""
    torch.manual_seed(seed)
    if cfg.name in preset_names():
        preset = get_preset(cfg.name)
        tokenizer = preset.tokenizer(cfg.tokenizer)
        model = SegEarthR1(preset.config(cfg.image_size, len(tokenizer)))
        model.init_weights()  # fresh heads as their references initialise them (never for a checkpoint)
        return model, tokenizer
    model, tokenizer = load_model_and_tokenizer(Path(cfg.name))
    # A presence threshold is calibrated for the weights it shipped with: training changes them, so its
    # checkpoints have none (the official rule) until one is read off their own training split.
    model.cfg = replace(model.cfg, presence_threshold=None)
    return model.float(), tokenizer


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any((name + ".").startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def apply_freezing(model: SegEarthR1, cfg: FreezeConfig, lora: LoraConfig) -> None:
    """Freeze parameters under ``cfg.prefixes``; with LoRA, also the adapted LLM's base weights (adapters
    train).

    Parts whose weights come from an installed package (nano's MiniLM) are always frozen: checkpoints
    do not store them, so training them would be silently lost.
    """
    packaged = model.packaged_keys()
    adapted = None
    if lora.enabled:
        target = model.llm.lora_target()
        adapted = next(f"{n}." for n, m in model.named_modules() if m is target)  # "llm.phi." for Phi
    for name, param in model.named_parameters():
        frozen = _matches(name, cfg.prefixes) or name in packaged
        if adapted is not None and name.startswith(adapted) and "lora_" not in name:
            frozen = True
        param.requires_grad_(not frozen)


def apply_lora(model: SegEarthR1, cfg: LoraConfig) -> None:
    """Inject LoRA adapters into the LLM's linear layers in place (module names stay the same).

    The training config refuses LoRA for an LLM without ``supports_lora`` (nano's MiniLM) before any
    model is built; :meth:`LanguageModel.lora_target` raises for one that gets here anyway.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
    # peft injects the adapters into the module it is given, in place.
    inject_adapter_in_model(config, model.llm.lora_target())


def set_train_mode(model: SegEarthR1, freeze: FreezeConfig) -> None:
    """``train()``, except frozen modules when ``frozen_train_mode`` is off (no drop-path there)."""
    model.train()
    if not freeze.frozen_train_mode:
        for name, module in model.named_modules():
            if name and _matches(name, freeze.prefixes):
                module.eval()


def _lora_layers(model: nn.Module) -> Iterator[tuple[nn.Module, str, LoraLayer]]:
    from peft.tuners.lora import LoraLayer

    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, LoraLayer):
                yield parent, child_name, child


@contextlib.contextmanager
def merged_lora(model: SegEarthR1) -> Iterator[SegEarthR1]:
    """Temporarily swap each LoRA layer for a plain Linear with the merged weight (for export).

    Nothing is merged in place, so training continues on the exact same adapter weights.
    """
    from peft.tuners.lora import Linear as LoraLinear

    swapped = []
    try:
        for parent, name, layer in _lora_layers(model):
            # The adapters wrap Phi's linear layers, each swapped for a merged nn.Linear here.
            assert isinstance(layer, LoraLinear)
            base = layer.get_base_layer()
            assert isinstance(base, nn.Linear)
            merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                               device=base.weight.device, dtype=base.weight.dtype)
            with torch.no_grad():
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
                merged.weight.copy_(base.weight + delta)
                if base.bias is not None:
                    merged.bias.copy_(base.bias)
            setattr(parent, name, merged)
            swapped.append((parent, name, layer))
        yield model
    finally:
        for parent, name, layer in swapped:
            setattr(parent, name, layer)


def export_pretrained(model: SegEarthR1, folder: Path, tokenizer) -> None:
    """Write the inference checkpoint (official format, LoRA merged) that predict/eval load."""
    with merged_lora(model) as plain:
        save_pretrained(plain, folder, tokenizer=tokenizer, overwrite=True)


class TrainingModule(nn.Module):
    """The model plus the official loss, behind one ``forward`` for the distributed engines."""

    def __init__(self, model: SegEarthR1, num_points: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = replace(model.cfg.loss, num_points=num_points) if num_points else model.cfg.loss

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        refer_ids: list[torch.Tensor],
        answer_ids: list[torch.Tensor | None],
        labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        num_masks: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """uint8 images [B,3,S,S] + prompt -> ``{"logits": final mask logits}`` and, with ``masks``,
        the weighted losses ``total``, ``loss_mask``, ``loss_dice``, ``loss_llm``."""
        model = self.model
        out = model(input_ids, refer_ids, images=model.normalize(images), attention_mask=attention_mask,
                     answer_ids=answer_ids, labels=labels)
        result = {"logits": out.mask_logits}
        if masks is None:
            return result
        terms = mask_loss_terms(out.layer_mask_logits, masks, self.loss_cfg, num_masks=num_masks)
        lm = None
        seq_labels = out.sequence.labels
        if seq_labels is not None and model.llm.has_lm_head:  # MiniLM has none
            logits = model.llm.logits(out.hidden_states)
            if (seq_labels != IGNORE_INDEX).any():
                lm = lm_loss(logits, seq_labels)
            else:
                # No reasoning sample here: a zero that still touches lm_head, so every process of a
                # DDP/FSDP step uses the same parameters whatever its batch's task mix.
                lm = logits.sum() * 0.0
        result.update(total_loss(terms, self.loss_cfg, lm))
        return result
