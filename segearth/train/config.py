"""Training configuration: one YAML file plus ``key.sub=value`` overrides, validated up front.

Every field has the official SegEarth-R1 default (spec §4.1) unless noted. Validation happens in
:func:`load_train_config` before any model, dataset or process group is built, so a typo costs a
second, not a job slot: unknown keys name the nearest valid key, wrong types name the expected type,
and missing data/checkpoint paths are reported by name.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("earthreason", "rrsisd", "refsegrs", "landcover")
PRESETS = ("small", "nano", "released")
MIXED_PRECISION = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message says which key and why."""


@dataclass
class ModelConfig:
    """Which network to train.

    ``name``: ``small`` (tiny test architecture, random init, byte-level tokenizer), ``nano``
    (EfficientNet-Lite0 + MiniLM from their packages, heads random), ``released``
    (Swin-B + Phi-1.5 sizes, random init; needs ``tokenizer``) or a checkpoint folder written by
    ``save_pretrained`` / an official release (weights and tokenizer are read from it).
    """

    name: str = "small"
    image_size: int | None = None  # ``small``/``nano``: input side (multiple of 64); default 256 / 384
    tokenizer: str | None = None  # tokenizer folder for ``released``


@dataclass
class DataConfig:
    """Which dataset to read and how."""

    name: str = "landcover"
    root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    max_train_samples: int | None = None  # first N samples only (smoke tests, quick runs)
    max_val_samples: int | None = 64  # validation is a progress signal; use `segearth eval` for scores
    first_question_only: bool = True  # official: EarthReason questions[0], RRSIS-D sentences[0]
    cache: bool = False  # keep letterboxed uint8 images/masks in RAM (small datasets / small sizes)
    augment: bool = False  # random crops (scale), 90° turns, flips, light; land cover only (segearth.train.augment)
    augment_min_crop: float = 0.5  # smallest crop side as a share of the scene's short side
    num_workers: int = 0


@dataclass
class LoraConfig:
    """Optional LoRA adapters on the Phi linear layers (through ``peft``)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + cosine decay to 0 (HF ``cosine``), official values."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    epochs: float = 15.0
    max_steps: int | None = None  # optimizer steps; overrides ``epochs`` when set
    batch_size: int = 1  # per process
    grad_accum: int = 1
    max_grad_norm: float | None = None  # the official ZeRO-2 run clips nothing (spec §4.1)
    mixed_precision: str = "no"  # no | bf16 | fp16; the official run is bf16
    gradient_checkpointing: bool = False  # on the Phi decoder layers, as the official run
    seed: int = 42
    num_points: int | None = None  # loss points per mask; None = the model's (official 12 544)


@dataclass
class FreezeConfig:
    """Parameters (by name prefix of :class:`SegEarthR1`) that do not train. Official: the Swin only."""

    prefixes: list[str] = field(default_factory=lambda: ["vision_encoder."])
    # The official Trainer keeps the frozen Swin in train mode (drop-path active, spec §4.3); False
    # runs it in eval mode, which is deterministic and usually what a fine-tune wants.
    frozen_train_mode: bool = True


@dataclass
class LogConfig:
    """Intervals are in optimizer steps."""

    output_dir: str = "runs/segearth"
    log_every: int = 10
    eval_every: int | None = 500  # None: only at the end
    save_every: int | None = 500  # None: only at the end
    keep_last: int = 3
    num_vis: int = 8  # validation samples drawn in each PNG grid
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """The whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Names people bring from the HF Trainer / official scripts, mapped to ours.
ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "bf16": "mixed_precision", "data_path": "root",
    "dataset_type": "name",
}


def _nearest(name: str, options: list[str]) -> str:
    prefix, _, leaf = name.rpartition(".")
    alias = ALIASES.get(leaf)
    if alias is not None and f"{prefix}.{alias}".lstrip(".") in options:
        return f"; did you mean {f'{prefix}.{alias}'.lstrip('.')!r}?"
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(options)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (YAML already typed it); only lossless conversions are accepted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads ``1e-4`` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            full = f"{prefix}{key}"
            raise ConfigError(f"unknown config key {full!r}" + _nearest(full, [f"{prefix}{n}" for n in names]))
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(raw[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def _all_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        out += _all_keys(tp, f"{prefix}{f.name}.") if is_dataclass(tp) else [f"{prefix}{f.name}"]
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``section.key=value`` pairs (values parsed as YAML: ``1e-4``, ``true``, ``[a, b]``, ``null``)."""
    valid = _all_keys()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        if key not in valid:
            raise ConfigError(f"unknown config key {key!r} in override {item!r}" + _nearest(key, valid))
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{p}: expected a mapping of keys in the config file, got {node!r}")
        node[leaf] = yaml.safe_load(text) if text.strip() else ""
    return raw


def validate(cfg: TrainConfig) -> None:
    """Checks that need values, not just types: choices, ranges and paths."""
    m, d, o, lg = cfg.model, cfg.data, cfg.optim, cfg.log
    if m.name not in PRESETS and not Path(m.name).is_dir():
        raise ConfigError(f"model.name: {m.name!r} is neither a preset {PRESETS} nor an existing checkpoint folder")
    if m.image_size is not None and (m.name not in ("small", "nano") or m.image_size <= 0 or m.image_size % 64):
        raise ConfigError("model.image_size: only for the 'small' and 'nano' presets, and a positive multiple of 64")
    if m.name == "released" and (m.tokenizer is None or not Path(m.tokenizer).is_dir()):
        raise ConfigError(f"model.tokenizer: the 'released' preset needs a tokenizer folder, got {m.tokenizer!r}")
    if d.name not in DATASETS:
        raise ConfigError(f"data.name: {d.name!r} is not one of {DATASETS}" + _nearest(d.name, list(DATASETS)))
    if not d.root:
        raise ConfigError("data.root: no data path given (set data.root in the YAML or data.root=... )")
    if not Path(d.root).is_dir():
        raise ConfigError(f"data.root: data path {d.root} does not exist")
    if d.augment and d.name != "landcover":
        raise ConfigError(f"data.augment: only for the land-cover set; crops and flips change what {d.name} "
                          "expressions and answers refer to (\"the car on the left\")")
    if not 0 < d.augment_min_crop <= 1:
        raise ConfigError(f"data.augment_min_crop: must be in (0, 1], got {d.augment_min_crop}")
    if o.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"optim.mixed_precision: {o.mixed_precision!r} is not one of {MIXED_PRECISION}")
    positive = {"optim.batch_size": o.batch_size, "optim.grad_accum": o.grad_accum, "log.log_every": lg.log_every,
                "log.keep_last": lg.keep_last, "optim.lr": o.lr, "optim.epochs": o.epochs}
    for key, val in [("log.eval_every", lg.eval_every), ("log.save_every", lg.save_every),
                     ("optim.max_steps", o.max_steps), ("optim.num_points", o.num_points)]:
        if val is not None:
            positive[key] = val
    for key, val in positive.items():
        if val <= 0:
            raise ConfigError(f"{key}: must be positive, got {val}")
    if not 0 <= o.warmup_ratio < 1:
        raise ConfigError(f"optim.warmup_ratio: must be in [0, 1), got {o.warmup_ratio}")
    if len(o.betas) != 2:
        raise ConfigError(f"optim.betas: expected two values, got {o.betas}")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override, type-check and validate a training config (raises :class:`ConfigError`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = _build(TrainConfig, apply_overrides(raw, list(overrides or [])), "")
    validate(cfg)
    return cfg
