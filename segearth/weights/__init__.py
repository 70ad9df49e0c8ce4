"""Built-in model weights shipped inside the package (see ``MODEL_CARD.md`` beside each folder)."""

from __future__ import annotations

from pathlib import Path

BUILTIN = {"nano": Path(__file__).parent / "nano"}
DEFAULT_MODEL = "nano"


def builtin_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Folder of a built-in checkpoint (config.json, model.safetensors, tokenizer files)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in model {name!r}; available: {', '.join(sorted(BUILTIN))}")
    folder = BUILTIN[name]
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in model {name!r} is not installed at {folder}; pass --model PATH")
    return folder


def resolve_model(model: str | Path | None) -> Path:
    """``--model`` value -> checkpoint folder: None = the default built-in, a built-in name, or a path."""
    if model is None:
        return builtin_model_path()
    if str(model) in BUILTIN:
        return builtin_model_path(str(model))
    return Path(model)
