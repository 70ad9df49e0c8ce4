"""Loading official SegEarth-R1 checkpoints (and our own, which use the same format).

An official ``save_pretrained`` folder holds ``config.json`` (``model_type "llava_phi"``), weights as
``model.safetensors`` / sharded ``model-0000x-of-0000y.safetensors`` + index (or ``pytorch_model*.bin``,
read only with ``torch.load(weights_only=True)``) and the tokenizer files.

Official key names are mapped onto our module tree by :data:`KEY_RULES`, one table read one way to
load and the other to save; the fused Phi ``query_key_value`` projection is split exactly into
``q_proj``/``k_proj``/``v_proj``. Tensors the official model saves but never uses for the mask are
accepted and dropped (:data:`UNUSED_KEYS`).
Everything else must match: a load fails with one message listing every missing, unexpected or
mis-shaped key.

Loading never holds the weights twice: the config is checked (:mod:`.config_checks`), the model is
built on the meta device and bounded in size, the key plan is made from the safetensors headers, and
only then is each tensor read (:mod:`.checkpoint_io`), converted and split on its own, and assigned
as the parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint_io import CheckpointError, CheckpointTensors, InMemoryTensors, open_weights, read_config
from .config import SegEarthConfig, config_from_json, official_config_json
from .config_checks import MAX_PARAMETERS, ConfigError
from .modeling.llm import fuse_qkv, split_fused_qkv
from .modeling.segearth_r1 import SegEarthR1

# Official key prefix <-> our key prefix, one table read both ways (first match wins). A ``{name}``
# placeholder stands for the same text on both sides, matched by its pattern in _PLACEHOLDERS.
KEY_RULES: list[tuple[str, str]] = [
    ("model.vision_tower.", "vision_encoder."),
    ("model.mm_projector.", "connector."),
    ("model.{phi}.", "llm.phi.{phi}."),
    ("lm_head.", "llm.lm_head."),
    ("origin_SEG_token_projector.", "d_projector.pooled_proj."),
    ("text_projector.", "d_projector.latent_proj."),
    ("local_project.", "d_projector.visual_proj."),
    ("SEG_token_projector.", "d_projector.query_proj."),
    ("d_layers.layers.{n}.0.", "d_projector.layers.{n}.attn."),
    ("d_layers.layers.{n}.1.", "d_projector.layers.{n}.ff."),
    ("d_layers.norm.", "d_projector.norm."),
    ("pixel_decoder.", "pixel_decoder."),
    ("predictor.", "mask_decoder."),
]
_PLACEHOLDERS = {"n": r"\d+", "phi": r"embed_tokens|layers|final_layernorm"}


def _prefix(rule_side: str) -> re.Pattern[str]:
    """One side of a rule as an anchored regex; ``{name}`` becomes the named group ``name``."""
    parts = re.split(r"\{(\w+)\}", rule_side)  # literal, name, literal, ...
    return re.compile("^" + "".join(
        re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_PLACEHOLDERS[p]})" for i, p in enumerate(parts)
    ))


_TO_OURS = [(_prefix(official), ours) for official, ours in KEY_RULES]
_TO_OFFICIAL = [(_prefix(ours), official) for official, ours in KEY_RULES]
# Saved by the official model, never used to compute a mask (query banks of other modes, score heads).
UNUSED_KEYS = re.compile(
    r"^(seg_query|predictor\.(query_feat|query_embed|SEG_query_embed|new_query_embed)\.weight"
    r"|predictor\.(SEG_proj|CLASS_proj)\.layers\.\d+\.(weight|bias))$"
)
# Deterministic buffers we recompute; checked for equality when present, optional otherwise.
OPTIONAL_KEYS = re.compile(r"\.relative_position_index$")
# Official Phi attention: one fused projection where we have three (q_proj, k_proj, v_proj).
_FUSED_QKV = re.compile(r"^model\.layers\.\d+\.self_attn\.query_key_value\.(weight|bias)$")
_SPLIT_QKV = re.compile(r"^(model\.layers\.\d+\.self_attn\.)([qkv])_proj\.(weight|bias)$")


def _apply(rules: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict()) + key[m.end():]
    return None


def map_key(official: str) -> str | None:
    """Official key -> our key (None when no rule applies)."""
    return _apply(_TO_OURS, official)


def official_key(ours: str) -> str:
    """Our key -> the official one; keys without a rule (nano's packaged MiniLM) keep our name."""
    return _apply(_TO_OFFICIAL, ours) or ours


def expand_official(key: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """Our (key, shape) pairs that one official tensor becomes (three for a fused qkv)."""
    ours = map_key(key)
    if ours is None:
        return []
    if _FUSED_QKV.match(key):
        part = (shape[0] // 3,) + tuple(shape[1:])
        return [(ours.replace(".query_key_value.", f".{p}_proj."), part) for p in "qkv"]
    return [(ours, shape)]


class CheckpointConfigError(CheckpointError, ConfigError):
    """A checkpoint's ``config.json`` that does not describe a model this code can build."""


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored_unused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self, source: str) -> str:
        lines = [f"cannot load checkpoint {source}:"]
        sections = (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.mismatched))
        for title, keys in sections:
            if keys:
                lines.append(f"  {len(keys)} {title} key(s):")
                lines += [f"    {k}" for k in keys]
        return "\n".join(lines)


def plan_load(
    model_shapes: Mapping[str, tuple[int, ...]],
    checkpoint_shapes: Mapping[str, tuple[int, ...]],
) -> LoadReport:
    """Compare shapes only (works on the meta device): what would loading this checkpoint do?"""
    report = LoadReport()
    covered: set[str] = set()
    for key, shape in checkpoint_shapes.items():
        if UNUSED_KEYS.match(key):
            report.ignored_unused.append(key)
            continue
        targets = expand_official(key, tuple(shape))
        if not targets and key in model_shapes:  # already in our naming (e.g. a modern q_proj layout)
            targets = [(key, tuple(shape))]
        if not targets:
            report.unexpected.append(key)
            continue
        for ours, want in targets:
            if ours not in model_shapes:
                report.unexpected.append(key)
                continue
            covered.add(ours)
            have = tuple(model_shapes[ours])
            if have != want:
                report.mismatched.append(f"{key}: checkpoint {list(want)} vs model {list(have)}")
    report.missing = sorted(k for k in model_shapes if k not in covered and not OPTIONAL_KEYS.search(k))
    return report


def to_official_state_dict(model: SegEarthR1) -> dict[str, torch.Tensor]:
    """Our state dict in the official naming (fused qkv), for checkpoints the official code can read."""
    ours = model.state_dict()
    heads = model.cfg.llm.num_attention_heads
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in ours.items():
        official = official_key(key)
        m = _SPLIT_QKV.match(official)
        if m:
            qkv.setdefault(f"{m.group(1)}query_key_value.{m.group(3)}", {})[m.group(2)] = tensor
        else:
            out[official] = tensor
    for key, parts in qkv.items():
        out[key] = fuse_qkv(parts["q"], parts["k"], parts["v"], heads)
    return out


def load_weights(
    model: SegEarthR1,
    tensors: CheckpointTensors,
    source: str,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    assign: bool = False,
) -> LoadReport:
    """Load ``tensors`` into ``model`` one at a time, after a strict plan made from shapes alone.

    ``assign=False`` copies into the model's own tensors (their dtype and device). ``assign=True``
    is for a model built on the meta device: each tensor read (in ``dtype`` for floating ones, on
    ``device``) becomes the parameter itself, so the weights exist once in memory.
    """
    heads = model.cfg.llm.num_attention_heads
    packaged = model.packaged_keys()
    own = model.state_dict()
    model_shapes = {k: tuple(v.shape) for k, v in own.items() if k not in packaged or k in tensors.shapes}
    report = plan_load(model_shapes, tensors.shapes)
    if not report.ok:
        raise CheckpointError(report.message(source))
    state: dict[str, torch.Tensor] = {}
    recomputed: dict[str, torch.Tensor] = {}  # deterministic buffers: compared, never loaded
    for key in tensors.keys():
        if UNUSED_KEYS.match(key):
            continue
        targets = expand_official(key, tensors.shapes[key]) or [(key, tensors.shapes[key])]
        like = own[targets[0][0]]
        want = dtype if (assign and dtype is not None and like.is_floating_point()) else like.dtype
        tensor = tensors.read(key, want)
        parts = split_fused_qkv(tensor, heads) if len(targets) == 3 else (tensor,)
        for (ours, _), part in zip(targets, parts, strict=True):
            if OPTIONAL_KEYS.search(ours):
                recomputed[ours] = part
            else:
                state[ours] = part.to(device if assign and device is not None else like.device)
        del tensor, parts  # the fused qkv is freed before the next read
    model.load_state_dict(state, strict=False, assign=assign)
    del state
    if assign:
        model.materialize_buffers()
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:  # a bug, not a user error: plan_load guarantees every key is covered
            raise RuntimeError(f"left on the meta device after loading {source}: {', '.join(left[:5])}")
    own = model.state_dict()
    for key, value in recomputed.items():
        if not torch.equal(value.to(own[key].device), own[key]):
            raise CheckpointError(f"cannot load checkpoint {source}: {key} differs from the Swin window index")
    return report


def load_pretrained(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    image_size: int = 1024,
) -> SegEarthR1:
    """Build and load a model from an official ``save_pretrained`` folder (or one of ours).

    Order: config checked, weight headers read, model size bounded and the key plan checked, and
    only then tensors read, each straight into its parameter.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    raw = read_config(folder)
    try:  # every value checked (types, ranges, sizes that fit together) before anything is read or built
        cfg = config_from_json(raw, image_size)
    except ValueError as exc:
        raise CheckpointConfigError(f"{folder / 'config.json'}: {exc}") from None
    tensors = open_weights(folder)
    vocab = tensors.shapes.get("model.embed_tokens.weight")
    if vocab is not None and vocab[0] != cfg.llm.vocab_size:
        # The vocabulary size follows the tensors (the official config and tensors can disagree).
        cfg = replace(cfg, llm=replace(cfg.llm, vocab_size=vocab[0]))
    return build_and_load(cfg, tensors, str(folder), device, dtype)


def build_and_load(
    cfg: SegEarthConfig,
    weights: Mapping[str, torch.Tensor] | CheckpointTensors,
    source: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SegEarthR1:
    """A model of ``cfg`` holding ``weights`` (official naming), in ``dtype`` on ``device``."""
    tensors = weights if isinstance(weights, CheckpointTensors) else InMemoryTensors(weights, source)
    meta = check_model_size(cfg, source)
    if _loads_package_weights(cfg):  # pretrained parts read their files at construction
        model = SegEarthR1(cfg).to(device)
        load_weights(model, tensors, source)
    else:  # no random initialisation, and no second copy of the weights
        model = meta
        load_weights(model, tensors, source, dtype=dtype, device=device, assign=True)
    # Casts what loading did not (buffers; the fp32 model with packaged parts); a no-op for the rest.
    return model.to(dtype).eval()


def check_model_size(cfg: SegEarthConfig, source: str) -> SegEarthR1:
    """The model of ``cfg`` built on the meta device (nothing allocated); refused above
    :data:`MAX_PARAMETERS` parameters or when the sizes do not fit together."""
    plain = cfg
    if _loads_package_weights(cfg):  # count an architecture-identical model that reads no files
        plain = replace(cfg, vision=_no_package(cfg.vision), llm=_no_package(cfg.llm))
    try:
        with torch.device("meta"):
            model = SegEarthR1(plain)
    except (ValueError, RuntimeError, AssertionError, KeyError) as exc:
        raise CheckpointConfigError(f"the config of {source} does not build a model: {exc}") from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointConfigError(
            f"the config of {source} describes a model of {count:,} parameters; "
            f"refusing to build more than {MAX_PARAMETERS:,} (the released SegEarth-R1 has 1.6 billion)"
        )
    return model


def _no_package(part):
    return replace(part, pretrained=False) if getattr(part, "pretrained", False) else part


def _loads_package_weights(cfg: SegEarthConfig) -> bool:
    return bool(getattr(cfg.vision, "pretrained", False) or getattr(cfg.llm, "pretrained", False))


def save_pretrained(model: SegEarthR1, folder: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the official format (our config included),
    and the tokenizer files when a tokenizer is given."""
    folder = Path(folder)
    target = folder / "model.safetensors"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    packaged = {official_key(k) for k in model.packaged_keys()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in to_official_state_dict(model).items() if k not in packaged}
    save_file(tensors, str(target), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(official_config_json(model.cfg), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return target


def load_model_and_tokenizer(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """``(model, tokenizer)`` from a checkpoint folder; the tokenizer always comes from the folder."""
    from .tokenizer import load_tokenizer

    model = load_pretrained(folder, device=device, dtype=dtype)
    return model, load_tokenizer(folder)

