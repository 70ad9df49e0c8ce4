"""Built-in model weights shipped inside the package (see ``MODEL_CARD.md`` beside each folder)."""

from __future__ import annotations

from pathlib import Path

BUILTIN = {"nano": Path(__file__).parent / "nano"}
ALIASES = {"segearth-nano": "nano"}
BUILTIN_NAMES = (*BUILTIN, *ALIASES)
DEFAULT_MODEL = "nano"


def builtin_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Folder of a built-in checkpoint (config.json, model.safetensors, tokenizer files)."""
    name = ALIASES.get(name, name)
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in model {name!r}; available: {', '.join(BUILTIN_NAMES)}")
    folder = BUILTIN[name]
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in model {name!r} is not installed at {folder}; pass --model PATH")
    return folder


def resolve_model(model: str | Path | None = None, revision: str | None = None, *, allow_bin: bool = False) -> Path:
    """``--model`` value -> checkpoint folder: None = the default built-in, a built-in name, a folder
    or a Hugging Face hub id ``org/name[@revision]`` (downloaded into its cache); see :mod:`segearth.hub`."""
    from ..hub import resolve_model as resolve  # the hub module imports this one

    return resolve(model, revision, allow_bin=allow_bin)
