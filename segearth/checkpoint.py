"""Loading official SegEarth-R1 checkpoints (and our own, which use the same format).

An official ``save_pretrained`` folder holds ``config.json`` (``model_type "llava_phi"``), weights as
``model.safetensors`` / sharded ``model-0000x-of-0000y.safetensors`` + index (or ``pytorch_model*.bin``,
read only with ``torch.load(weights_only=True)``) and the tokenizer files.

Official key names are mapped onto our module tree by :data:`KEY_RULES`; the fused Phi
``query_key_value`` projection is split exactly into ``q_proj``/``k_proj``/``v_proj``. Tensors the
official model saves but never uses for the mask are accepted and dropped (:data:`UNUSED_KEYS`).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from .checkpoint_io import CheckpointError, CheckpointTensors, InMemoryTensors, open_weights, read_config
from .config import SegEarthConfig, config_from_dict, config_from_official, official_config_json
from .config_checks import MAX_PARAMETERS, ConfigError, validate_config
from .modeling.llm import fuse_qkv, split_fused_qkv
from .modeling.segearth_r1 import SegEarthR1

# (official regex, our replacement); first match wins.
KEY_RULES: list[tuple[str, str]] = [
    (r"^model\.vision_tower\.", "vision_encoder."),
    (r"^model\.mm_projector\.", "connector."),
    (r"^model\.(embed_tokens|layers|final_layernorm)\.", r"llm.phi.\1."),
    (r"^lm_head\.", "llm.lm_head."),
    (r"^origin_SEG_token_projector\.", "d_projector.pooled_proj."),
    (r"^text_projector\.", "d_projector.latent_proj."),
    (r"^local_project\.", "d_projector.visual_proj."),
    (r"^SEG_token_projector\.", "d_projector.query_proj."),
    (r"^d_layers\.layers\.(\d+)\.0\.", r"d_projector.layers.\1.attn."),
    (r"^d_layers\.layers\.(\d+)\.1\.", r"d_projector.layers.\1.ff."),
    (r"^d_layers\.norm\.", "d_projector.norm."),
    (r"^pixel_decoder\.", "pixel_decoder."),
    (r"^predictor\.", "mask_decoder."),
]
# Saved by the official model, never used to compute a mask (query banks of other modes, score heads).
UNUSED_KEYS = re.compile(
    r"^(seg_query|predictor\.(query_feat|query_embed|SEG_query_embed|new_query_embed)\.weight"
    r"|predictor\.(SEG_proj|CLASS_proj)\.layers\.\d+\.(weight|bias))$"
)
# Deterministic buffers we recompute; checked for equality when present, optional otherwise.
OPTIONAL_KEYS = re.compile(r"\.relative_position_index$")
_FUSED_QKV = re.compile(r"^(model\.layers\.\d+\.self_attn\.)query_key_value\.(weight|bias)$")


def map_key(official: str) -> str | None:
    """Official key -> our key (None when no rule applies)."""
    for pattern, repl in KEY_RULES:
        if re.match(pattern, official):
            return re.sub(pattern, repl, official)
    return None


def expand_official(key: str, shape: tuple[int, ...], num_heads: int) -> list[tuple[str, tuple[int, ...]]]:
    """Our (key, shape) pairs that one official tensor becomes (three for a fused qkv)."""
    m = _FUSED_QKV.match(key)
    if m:
        base = map_key(m.group(1) + "x." + m.group(2))
        assert base is not None
        prefix = base[: -len("x." + m.group(2))]
        part = (shape[0] // 3,) + tuple(shape[1:])
        return [(f"{prefix}{p}_proj.{m.group(2)}", part) for p in "qkv"]
    ours = map_key(key)
    return [(ours, shape)] if ours is not None else []


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
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.mismatched)):
            if keys:
                lines.append(f"  {len(keys)} {title} key(s):")
                lines += [f"    {k}" for k in keys]
        return "\n".join(lines)


def plan_load(
    model_shapes: Mapping[str, tuple[int, ...]],
    checkpoint_shapes: Mapping[str, tuple[int, ...]],
    num_heads: int,
    vocab_follows_checkpoint: bool = False,
) -> LoadReport:
    """Compare shapes only (works on the meta device): what would loading this checkpoint do?"""
    report = LoadReport()
    covered: set[str] = set()
    for key, shape in checkpoint_shapes.items():
        if UNUSED_KEYS.match(key):
            report.ignored_unused.append(key)
            continue
        targets = expand_official(key, tuple(shape), num_heads)
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
            vocab_ok = vocab_follows_checkpoint and ours in _VOCAB_KEYS and have[1:] == want[1:]
            if have != want and not vocab_ok:
                report.mismatched.append(f"{key}: checkpoint {list(want)} vs model {list(have)}")
    report.missing = sorted(k for k in model_shapes if k not in covered and not OPTIONAL_KEYS.search(k))
    return report


_VOCAB_KEYS = {"llm.phi.embed_tokens.weight", "llm.lm_head.weight"}


def to_official_state_dict(model: SegEarthR1) -> dict[str, torch.Tensor]:
    """Our state dict in the official naming (fused qkv), for checkpoints the official code can read."""
    ours = model.state_dict()
    heads = model.cfg.llm.num_attention_heads
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in ours.items():
        m = re.match(r"^llm\.phi\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            qkv.setdefault(f"model.layers.{m.group(1)}.self_attn.query_key_value.{m.group(3)}", {})[m.group(2)] = tensor
            continue
        out[_official_name(key)] = tensor
    for key, parts in qkv.items():
        out[key] = fuse_qkv(parts["q"], parts["k"], parts["v"], heads)
    return out


_INVERSE_RULES: list[tuple[str, str]] = [
    (r"^vision_encoder\.", "model.vision_tower."),
    (r"^connector\.", "model.mm_projector."),
    (r"^llm\.phi\.", "model."),
    (r"^llm\.lm_head\.", "lm_head."),
    (r"^d_projector\.pooled_proj\.", "origin_SEG_token_projector."),
    (r"^d_projector\.latent_proj\.", "text_projector."),
    (r"^d_projector\.visual_proj\.", "local_project."),
    (r"^d_projector\.query_proj\.", "SEG_token_projector."),
    (r"^d_projector\.layers\.(\d+)\.attn\.", r"d_layers.layers.\1.0."),
    (r"^d_projector\.layers\.(\d+)\.ff\.", r"d_layers.layers.\1.1."),
    (r"^d_projector\.norm\.", "d_layers.norm."),
    (r"^mask_decoder\.", "predictor."),
]


def _official_name(key: str) -> str:
    for pattern, repl in _INVERSE_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def load_official_weights(model: SegEarthR1, official: Mapping[str, torch.Tensor], source: str = "checkpoint") -> LoadReport:
    """Copy official-format tensors into ``model`` strictly; raise :class:`CheckpointError` otherwise.

    Frozen parts whose weights ship in an installed package (nano's MiniLM) may be absent.
    """
    return load_weights(model, InMemoryTensors(official, source), source)


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
    report = plan_load(model_shapes, tensors.shapes, heads)
    if not report.ok:
        raise CheckpointError(report.message(source))
    state: dict[str, torch.Tensor] = {}
    recomputed: dict[str, torch.Tensor] = {}  # deterministic buffers: compared, never loaded
    for key in tensors.keys():
        if UNUSED_KEYS.match(key):
            continue
        targets = expand_official(key, tensors.shapes[key], heads) or [(key, tensors.shapes[key])]
        like = own[targets[0][0]]
        want = dtype if (assign and dtype is not None and like.is_floating_point()) else like.dtype
        tensor = tensors.read(key, want)
        parts = split_fused_qkv(tensor, heads) if len(targets) == 3 else (tensor,)
        for (ours, _), part in zip(targets, parts):
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
    config_path = folder / "config.json"
    validate_config(raw, config_path)
    tensors = open_weights(folder)
    try:
        if "segearth" in raw:  # written by segearth: the full config is stored
            cfg = config_from_dict(raw["segearth"])
        else:  # an official release: released sizes, LLM values from the file
            cfg = config_from_official(raw, image_size=image_size)
        vocab = tensors.shapes.get("model.embed_tokens.weight")
        if vocab is not None and vocab[0] != cfg.llm.vocab_size:
            # The vocabulary size follows the tensors (the official config and tensors can disagree).
            cfg = replace(cfg, llm=replace(cfg.llm, vocab_size=vocab[0]))
    except ValueError as exc:  # cross-field rules of the config classes (e.g. heads divide the width)
        raise ConfigError(f"{config_path}: {exc}") from None
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
        raise ConfigError(f"the config of {source} does not build a model: {exc}") from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(
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
    packaged = {_official_name(k) for k in model.packaged_keys()}
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

