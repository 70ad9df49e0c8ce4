"""Checks on a checkpoint's ``config.json`` before anything is built or allocated.

Every value used to build the model is checked for type and range here, so a wrong value is
reported as one line naming the file and the key instead of an ``int()`` traceback or an
allocation of terabytes. The bounds are far above any SegEarth-R1 model (the released one has
1.6 B parameters) but low enough that no value passing them alone can exhaust memory;
:data:`MAX_PARAMETERS` then bounds the model as a whole (see ``checkpoint.check_model_size``).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .checkpoint_io import CheckpointError
from .config import (
    DProjectorConfig,
    EfficientNetConfig,
    LossConfig,
    MaskDecoderConfig,
    MiniLMConfig,
    PhiConfig,
    PixelDecoderConfig,
    SegEarthConfig,
    SwinConfig,
)

MAX_PARAMETERS = 10_000_000_000  # six times the released model
MAX_IMAGE_SIZE = 4096  # 16x the pixels of the released 1024² input; activations grow with its square

# Upper bounds of positive integers, by field name; any other integer is a width, a head count or a
# stride, bounded by _MAX_WIDTH.
_MAX_WIDTH = 1 << 16
_INT_LIMITS = {
    "vocab_size": 1 << 21,
    "max_position_embeddings": 1 << 20,
    "num_points": 1 << 24,
    "num_hidden_layers": 256,
    "num_layers": 256,
    "num_encoder_layers": 256,
    "depth": 256,
    "depths": 256,
    "image_size": MAX_IMAGE_SIZE,
}
_NON_NEGATIVE_INTS = {"pad_token_id"}

_Check = tuple[str, Callable[[float], bool]]
_FLOAT_RANGES: dict[str, _Check] = {
    "layer_norm_eps": ("a number in (0, 1)", lambda x: 0 < x < 1),
    "partial_rotary_factor": ("a number in (0, 1]", lambda x: 0 < x <= 1),
    "rope_theta": ("a positive number", lambda x: x > 0),
    "mlp_ratio": ("a number in (0, 64]", lambda x: 0 < x <= 64),
    "drop_path_rate": ("a number in [0, 1)", lambda x: 0 <= x < 1),
    "oversample_ratio": ("a number in [1, 100]", lambda x: 1 <= x <= 100),
    "importance_sample_ratio": ("a number in [0, 1]", lambda x: 0 <= x <= 1),
    "pixel_std": ("a positive number", lambda x: x > 0),
}
_DEFAULT_FLOAT: _Check = ("a non-negative number", lambda x: x >= 0)

_CHOICES = {
    "swin_type": ("base", "large"),
    "mm_projector_type": ("SparseConv_1",),
    "variant": ("lite0", "lite1", "lite2"),
    "prompt_task": ("referring", "reasoning"),
}
_SECTIONS: dict[str, dict[str, type]] = {
    "vision": {"swin": SwinConfig, "efficientnet": EfficientNetConfig},
    "llm": {"phi": PhiConfig, "minilm": MiniLMConfig},
    "d_projector": {"": DProjectorConfig},
    "pixel_decoder": {"": PixelDecoderConfig},
    "mask_decoder": {"": MaskDecoderConfig},
    "loss": {"": LossConfig},
}
_SEQUENCE_LENGTHS = {"depths": 4, "num_heads": 4, "pixel_mean": 3, "pixel_std": 3}


class ConfigError(CheckpointError):
    """A ``config.json`` value of the wrong type or out of range."""


def validate_config(raw: dict, path: Path | str) -> None:
    """Check every value of ``raw`` that builds the model; raise :class:`ConfigError` on the first bad one."""
    if "segearth" not in raw:  # an official llava_phi config: the Phi keys plus a few of its own
        for f in fields(PhiConfig):
            if f.name != "kind" and f.name in raw:
                _check(path, f.name, f.name, f.default, raw[f.name])
        _check(path, "qk_layernorm", "qk_layernorm", False, raw.get("qk_layernorm", False))
        for key in ("swin_type", "mm_projector_type"):
            if key in raw:
                _check(path, key, key, "", raw[key])
        return
    ours = raw["segearth"]
    if not isinstance(ours, dict):
        raise ConfigError(f"{path}: segearth must be an object, got {_show(ours)}")
    top = {f.name: f for f in fields(SegEarthConfig)}
    unknown = sorted(set(ours) - set(top))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in segearth: {', '.join(unknown)}")
    for name, value in ours.items():
        key = f"segearth.{name}"
        if name in _SECTIONS:
            _check_section(path, key, name, value)
        else:
            _check(path, key, name, top[name].default, value)
    size = ours.get("image_size", 1024)
    if size % 64:
        raise ConfigError(f"{path}: segearth.image_size must be a multiple of 64, got {size}")


def _check_section(path: Path | str, key: str, name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be an object, got {_show(value)}")
    kinds = _SECTIONS[name]
    kind = value.get("kind", next(iter(kinds)))
    if kind not in kinds:
        raise ConfigError(f"{path}: {key}.kind must be one of {', '.join(sorted(kinds))}, got {_show(kind)}")
    section = kinds[kind]
    known = {f.name: f.default for f in fields(section)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in {key}: {', '.join(unknown)}")
    for field_name, v in value.items():
        _check(path, f"{key}.{field_name}", field_name, known[field_name], v)


def _check(path: Path | str, key: str, name: str, default: Any, value: Any) -> None:
    """``value`` must have the type of ``default`` (the dataclass default) and lie in the range for ``name``."""
    def fail(want: str) -> ConfigError:
        return ConfigError(f"{path}: {key} must be {want}, got {_show(value)}")

    if isinstance(default, tuple):
        length = _SEQUENCE_LENGTHS.get(name)
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise fail(f"a list of {length} values" if length else "a list")
        for i, item in enumerate(value):
            _check(path, f"{key}[{i}]", name, default[0], item)
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail("true or false")
    elif isinstance(default, int):
        low = 0 if name in _NON_NEGATIVE_INTS else 1
        high = _INT_LIMITS.get(name, _MAX_WIDTH)
        want = f"{'a non-negative' if low == 0 else 'a positive'} integer <= {high:,}"
        if type(value) is not int or not low <= value <= high:
            raise fail(want)
    elif isinstance(default, float):
        what, ok = _FLOAT_RANGES.get(name, _DEFAULT_FLOAT)
        if type(value) not in (int, float) or abs(value) > 1e300 or not math.isfinite(value) or not ok(value):
            raise fail(what)
    elif isinstance(default, str) or default is None:  # prompt_task's default is None
        choices = _CHOICES.get(name) or (_activations() if name == "hidden_act" else None)
        if default is None and value is None:
            return
        if not isinstance(value, str) or (choices and value not in choices):
            raise fail(f"one of {', '.join(choices)}" if choices else "a string")


def _activations() -> tuple[str, ...]:
    from transformers.activations import ACT2FN

    return tuple(sorted(ACT2FN))


def _show(value: Any) -> str:
    """A short JSON rendering of a bad value for the error line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."
