"""Training configuration: one YAML file plus ``key.sub=value`` overrides, validated up front.

Every field has the official SegEarth-R1 default (spec §4.1) unless noted. Validation happens in
:func:`load_train_config` before any model, dataset or process group is built, so a typo costs a
second, not a job slot. Types and ranges are declared on the fields and checked by the loader of
the model config (:mod:`segearth.config_checks`): unknown keys name the nearest valid key, wrong
values name the key and what was expected. Presets and datasets come from their registries
(:mod:`segearth.presets`, :mod:`segearth.data.registry`); missing data/checkpoint paths are reported
by name.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml

from ..config_checks import MAX_IMAGE_SIZE, ConfigError, Length, Range, all_keys, from_data, nearest
from ..data.registry import DATASETS, get_dataset
from ..presets import get_preset, preset_names

if TYPE_CHECKING:
    from ..modeling.language_model import LanguageModel

__all__ = ["ConfigError", "TrainConfig", "load_train_config"]

PositiveInt = Annotated[int, Range(1)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
Share = Annotated[float, Range(0, 1, high_open=True)]


@dataclass
class ModelConfig:
    """Which network to train.

    ``name``: a preset of :mod:`segearth.presets` (``small``: tiny test architecture; ``nano``:
    EfficientNet-Lite0 + MiniLM from their packages, heads random; ``released``: Swin-B + Phi-1.5
    sizes, random init, needs ``tokenizer``) or a checkpoint folder written by ``save_pretrained`` /
    an official release (weights and tokenizer are read from it).
    """

    name: str = "small"
    # Input side for presets that choose it (small, nano); None: the preset's default (256 / 384).
    image_size: Annotated[int, Range(64, MAX_IMAGE_SIZE, step=64)] | None = None
    tokenizer: str | None = None  # tokenizer folder, for presets that need one (``released``)


@dataclass
class DataConfig:
    """Which dataset to read (a name of :mod:`segearth.data.registry`) and how."""

    name: str = "landcover"
    root: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    max_train_samples: PositiveInt | None = None  # first N samples only (smoke tests, quick runs)
    max_val_samples: PositiveInt | None = 64  # validation is a progress signal; use `segearth eval` for scores
    first_question_only: bool = True  # official: EarthReason questions[0], RRSIS-D sentences[0]
    cache: bool = False  # keep letterboxed uint8 images/masks in RAM (small datasets / small sizes)
    augment: bool = False  # random crops (scale), 90° turns, flips, light, where the dataset allows (train.augment)
    augment_min_crop: Annotated[float, Range(0, 1, low_open=True)] = 0.5  # smallest crop side / scene's short side
    augment_sensor: bool = False  # also coarser GSD, grey, colour balance and haze (imagery from any sensor)
    num_workers: Annotated[int, Range(0)] = 0


@dataclass
class LoraConfig:
    """Optional LoRA adapters on the Phi linear layers (through ``peft``)."""

    enabled: bool = False
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: Share = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"])


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + cosine decay to 0 (HF ``cosine``), official values."""

    lr: PositiveFloat = 1e-4
    weight_decay: Annotated[float, Range(0)] = 0.0
    betas: Annotated[list[Share], Length(2)] = field(default_factory=lambda: [0.9, 0.999])
    eps: PositiveFloat = 1e-8
    warmup_ratio: Share = 0.03
    epochs: PositiveFloat = 15.0
    max_steps: PositiveInt | None = None  # optimizer steps; overrides ``epochs`` when set
    batch_size: PositiveInt = 1  # per process
    grad_accum: PositiveInt = 1
    max_grad_norm: PositiveFloat | None = None  # the official ZeRO-2 run clips nothing (spec §4.1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # the official run is bf16
    gradient_checkpointing: bool = False  # on the Phi decoder layers, as the official run
    seed: Annotated[int, Range(0)] = 42
    num_points: PositiveInt | None = None  # loss points per mask; None = the model's (official 12 544)


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
    log_every: PositiveInt = 10
    eval_every: PositiveInt | None = 500  # None: only at the end
    save_every: PositiveInt | None = 500  # None: only at the end
    keep_last: PositiveInt = 3
    num_vis: Annotated[int, Range(0)] = 8  # validation samples drawn in each PNG grid
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


class _YamlLoader(yaml.SafeLoader):
    """YAML as configs are written: ``1e-4`` is a number (YAML 1.1 wants ``1.0e-4`` and reads a string)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader with one more float form


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``section.key=value`` pairs (values parsed as YAML: ``1e-4``, ``true``, ``[a, b]``, ``null``)."""
    valid = all_keys(TrainConfig)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        if key not in valid:
            raise ConfigError(f"unknown config key {key!r} in override {item!r}" + nearest(key, valid, ALIASES))
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{p} must be a mapping of keys in the config file, got {node!r}")
        node[leaf] = _yaml(text) if text.strip() else ""
    return raw


def validate(cfg: TrainConfig) -> None:
    """Checks across values and on disk (the types and ranges of single values are checked on load)."""
    m, d = cfg.model, cfg.data
    if m.name in preset_names():  # a preset name wins over a folder of that name
        preset = get_preset(m.name)
        if m.image_size is not None and preset.default_image_size is None:
            raise ConfigError(f"model.image_size: the {m.name!r} preset has a fixed input size")
        if preset.needs_tokenizer and (m.tokenizer is None or not Path(m.tokenizer).is_dir()):
            raise ConfigError(f"model.tokenizer: the {m.name!r} preset needs a tokenizer folder, got {m.tokenizer!r}")
        _check_llm_features(cfg, preset.language_model())
    elif not Path(m.name).is_dir():
        raise ConfigError(f"model.name: {m.name!r} is neither a preset ({', '.join(preset_names())}) nor an "
                          "existing checkpoint folder")
    elif m.image_size is not None:
        raise ConfigError("model.image_size: a checkpoint's input size is its own; only presets take one")
    try:
        spec = get_dataset(d.name)
    except ValueError as exc:
        raise ConfigError(f"data.name: {exc}") from None
    if not d.root:
        raise ConfigError("data.root: no data path given (set data.root in the YAML or data.root=... )")
    if not Path(d.root).is_dir():
        raise ConfigError(f"data.root: data path {d.root} does not exist")
    if d.augment and not spec.augment:
        allowed = ", ".join(name for name, s in DATASETS.items() if s.augment)
        raise ConfigError(f"data.augment: only for {allowed}; crops and flips change what {d.name} "
                          "expressions and answers refer to (\"the car on the left\")")


def _check_llm_features(cfg: TrainConfig, llm: type[LanguageModel]) -> None:
    """Refuse what the model's language model cannot do (nano's MiniLM: no LoRA, no gradient checkpointing)."""
    wanted = [("lora.enabled", cfg.lora.enabled, llm.supports_lora, "LoRA"),
              ("optim.gradient_checkpointing", cfg.optim.gradient_checkpointing, llm.supports_gradient_checkpointing,
               "gradient checkpointing")]
    for key, asked, supported, what in wanted:
        if asked and not supported:
            raise ConfigError(f"{key}: the {cfg.model.name!r} model's language model ({llm.__name__}) does not "
                              f"support {what}; set {key}=false")


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override, type-check and validate a training config (raises :class:`ConfigError`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = _yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = from_data(TrainConfig, apply_overrides(raw, list(overrides or [])), aliases=ALIASES)
    validate(cfg)
    return cfg
