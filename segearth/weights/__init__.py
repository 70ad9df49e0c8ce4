"""Built-in model weights shipped inside the package (see ``MODEL_CARD.md`` beside each folder).

Which names are built in comes from the preset registry (:mod:`segearth.presets`): every preset
with a ``weights`` folder, under its name and aliases.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..presets import get_preset, preset_names

BUILTIN_NAMES = preset_names(with_weights=True)
DEFAULT_MODEL = "nano"


def builtin_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Folder of a built-in checkpoint (config.json, model.safetensors, tokenizer files)."""
    if name not in BUILTIN_NAMES:
        raise ConfigError(f"unknown built-in model {name!r}; available: {', '.join(BUILTIN_NAMES)}")
    preset = get_preset(name)
    folder = preset.weights
    assert folder is not None  # BUILTIN_NAMES holds only presets with weights
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in model {preset.name!r} is not installed at {folder}; pass --model PATH")
    return folder


def resolve_model(model: str | Path | None = None, revision: str | None = None, *, allow_bin: bool = False) -> Path:
    """``--model`` value -> checkpoint folder: None = the default built-in, a built-in name, a folder
    or a Hugging Face hub id ``org/name[@revision]`` (downloaded into its cache); see :mod:`segearth.hub`."""
    from ..hub import resolve_model as resolve  # the hub module imports this one

    return resolve(model, revision, allow_bin=allow_bin)
