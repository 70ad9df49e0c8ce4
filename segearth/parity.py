"""Numerical parity against tensors recorded from the official implementation.

A fixture folder (layout of ``shared/fixtures/official/parity_small``) holds ``config.json`` (the
official model configuration and the small-model overrides), ``weights.safetensors`` (official key
names) and ``io.safetensors`` (``input.*`` tensors fed to the official forward passes, and every
intermediate/output tensor they produced). :func:`run_parity` rebuilds the model from the config,
loads the weights with the user-facing loader, replays the inputs and compares every recorded tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import CheckpointError, build_and_load
from .config import SegEarthConfig, config_from_official
from .modeling.llm import PhiLanguageModel
from .modeling.segearth_r1 import SegEarthOutput, SegEarthR1
from .train.losses import lm_loss, mask_loss_terms, total_loss

FLOAT_TOLERANCE = 1e-4


@dataclass
class Comparison:
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    exact: bool  # integer, boolean or binary tensors must match exactly
    ok: bool


def fixture_config(raw: dict, io: dict[str, torch.Tensor]) -> SegEarthConfig:
    """Model config from a fixture's ``config.json`` (image size from the recorded input)."""
    llm = _sections(raw, "llm_config")
    if not llm:
        raise CheckpointError("fixture config.json has no 'llm_config' section")
    # Several decoder sections may exist (full values, overrides only): the fullest is authoritative.
    decoder = max(_sections(raw, "mask_decoder_cfg"), key=lambda d: sum(k.startswith("MODEL.") for k in d),
                  default=None)
    swin = _sections(raw, "small_vision_tower")
    image_size = int(io["input.images"].shape[-1])
    return config_from_official(
        llm[0], swin_kwargs=swin[0] if swin else None, mask_decoder_cfg=decoder, image_size=image_size
    )


def _sections(raw: dict, name: str) -> list[dict]:
    """Sections called ``name`` or ``name (some description)``."""
    return [v for k, v in raw.items() if (k == name or k.startswith(name + " ")) and isinstance(v, dict)]


def _per_sample(io: dict[str, torch.Tensor], prefix: str, batch: int) -> list[torch.Tensor] | None:
    if f"{prefix}_0" not in io:
        return None
    return [io[f"{prefix}_{b}"] for b in range(batch)]


def replay(model: SegEarthR1, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run the recorded inputs through ``model`` and name our tensors as the fixture does."""
    input_ids = io["input.input_ids"]
    batch = input_ids.shape[0]
    layer_outputs: list[torch.Tensor] = []
    assert isinstance(model.llm, PhiLanguageModel)  # the fixtures are of the official (Phi) model
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: layer_outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in model.llm.phi.layers
    ]
    try:
        with torch.no_grad():
            out: SegEarthOutput = model(
                input_ids=input_ids,
                refer_ids=_per_sample(io, "input.token_refer_id", batch),
                images=io["input.images"].to(model.dtype),
                attention_mask=io.get("input.attention_mask"),
                answer_ids=_per_sample(io, "input.token_answer_id", batch),
                labels=io.get("input.labels"),
                intermediates=True,
            )
            lm_logits = model.llm.logits(out.hidden_states).float()
    finally:
        for h in hooks:
            h.remove()

    t: dict[str, torch.Tensor] = {}
    for i, r in enumerate(out.image.res):
        t[f"vision.res{i + 2}"] = r
    t["connector.visual_tokens"] = out.image.visual_tokens
    seq = out.sequence
    t["llm.inputs_embeds"] = seq.inputs_embeds
    t["llm.attention_mask"] = seq.attention_mask
    t["llm.refer_embedding_indices_expanded"] = seq.refer_mask.long()
    if seq.labels is not None:
        t["llm.labels_expanded"] = seq.labels
    for i, hidden in enumerate(layer_outputs):
        t[f"llm.layer{i}.output"] = hidden
    t["llm.last_hidden_state"] = out.hidden_states
    px = out.image.pixel
    t["pixel_decoder.encoder_memory"] = px.encoder_memory
    t["pixel_decoder.spatial_shapes"] = torch.tensor(px.spatial_shapes, dtype=torch.long)
    sizes = torch.tensor([h * w for h, w in px.spatial_shapes])
    t["pixel_decoder.level_start_index"] = torch.cat((torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]))
    t["pixel_decoder.mask_features"] = px.mask_features
    for i, m in enumerate(px.multi_scale_features):
        t[f"pixel_decoder.multi_scale_features_{i}"] = m
    dp = out.d_projector
    for b, s in enumerate(out.description_states):
        t[f"dproj.refer_states_{b}"] = s
    t["dproj.origin_SEG_embedding"] = dp.pooled
    t["dproj.local_vision"] = dp.visual
    if len({lat.shape for lat in dp.latents}) == 1:  # batched tensors exist only for equal lengths
        t["dproj.text_projected"] = torch.cat([lat[0] for lat in dp.latents])
        for j in range(len(dp.attn_out[0])):
            t[f"dproj.layer{j}.attn_out"] = torch.cat([a[j] for a in dp.attn_out])
            t[f"dproj.layer{j}.ff_out"] = torch.cat([f[j] for f in dp.ff_out])
    t["dproj.d_projector_out"] = dp.fused
    t["dproj.SEG_embedding"] = dp.query
    for i, m in enumerate(out.layer_mask_logits):
        t[f"predictor.pred_masks_layer{i}"] = m
    upsampled = model.upsample_logits(out.mask_logits)
    for b in range(batch):
        t[f"output.mask_logits_upsampled_{b}"] = upsampled[b]
        t[f"output.pred_masks_{b}"] = (upsampled[b, 0] > 0).float()
        t[f"output.mask_probs_upsampled_{b}"] = upsampled[b].sigmoid()

    calls = range(len(out.layer_mask_logits))
    if "input.masks" in io and all(f"loss.point_coords_call{c}" in io for c in calls):
        points = [io[f"loss.point_coords_call{c}"] for c in calls]
        terms = mask_loss_terms(out.layer_mask_logits, io["input.masks"].float(), model.cfg.loss, points)
        for k, v in terms.items():
            t[f"loss.raw.{k}"] = v
        llm = lm_loss(lm_logits, seq.labels) if seq.labels is not None and _has_answer(io) else None
        for k, v in total_loss(terms, model.cfg.loss, llm).items():
            t[f"loss.{k}"] = v
        t["loss.loss_SEG_class"] = torch.zeros(())  # no score head in the released configuration
        t["loss.lm_logits"] = lm_logits
    return t


def _has_answer(io: dict[str, torch.Tensor]) -> bool:
    """The LM loss exists only for the reasoning (EarthReason) task, whose prompts carry an answer."""
    return "input.token_answer_id_0" in io


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor) -> Comparison:
    ours = ours.detach().cpu()
    shape = tuple(ref.shape)
    if tuple(ours.shape) != shape:
        return Comparison(name, shape, float("inf"), True, False)
    binary = ref.is_floating_point() and ref.numel() > 1 and bool(((ref == 0) | (ref == 1)).all())
    exact = not ref.is_floating_point() or binary
    diff = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    ok = diff == 0 if exact else diff <= FLOAT_TOLERANCE
    return Comparison(name, shape, diff, exact, ok)


def run_parity(folder: str | Path, device: str = "cpu") -> tuple[list[Comparison], list[str]]:
    """Compare every recorded non-input tensor; returns (comparisons, names we could not compute)."""
    folder = Path(folder)
    for name in ("config.json", "weights.safetensors", "io.safetensors"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a parity fixture: {name} is missing")
    raw = json.loads((folder / "config.json").read_text())
    io = load_file(str(folder / "io.safetensors"))
    cfg = fixture_config(raw, io)
    weights = str(folder / "weights.safetensors")
    model = build_and_load(cfg, load_file(weights), weights, device)
    ours = replay(model, {k: v.to(device) for k, v in io.items()})
    results, missing = [], []
    for name, ref in io.items():
        if name.startswith("input.") or name.startswith("loss.point_coords"):
            continue
        if name not in ours:
            missing.append(name)
            continue
        results.append(compare(name, ours[name], ref))
    return results, missing
