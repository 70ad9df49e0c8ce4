"""Model presets by name: the one registry that training, ``--model`` and the built-in weights read.

A preset says how to build a model from scratch (its config and tokenizer) and, when the package
ships trained weights for it, where they are. Adding a preset is one :func:`register_preset` call
below (plus the config function it names, usually in :mod:`segearth.config`)::

    register_preset(Preset("tiny", "a smaller nano", lambda size, vocab: nano_config(size or 256),
                           _minilm_tokenizer, default_image_size=256))

``segearth train`` accepts every preset name (``model.name``); ``--model`` accepts those with
weights (:mod:`segearth.weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SegEarthConfig, nano_config, released_config, small_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .modeling.language_model import LanguageModel

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Preset:
    """A named model.

    Attributes:
        config: ``(image_size or None for the default, tokenizer vocabulary size) -> config``.
        tokenizer: ``(tokenizer folder or None) -> tokenizer`` for training from scratch.
        default_image_size: the input side when none is chosen; None = fixed by the preset.
        needs_tokenizer: the tokenizer comes from a folder the user gives (``model.tokenizer``).
        weights: the checkpoint folder shipped in the package, None when there is none.
        aliases: other names of the preset.
    """

    name: str
    description: str
    config: Callable[[int | None, int], SegEarthConfig]
    tokenizer: Callable[[str | None], Any]
    default_image_size: int | None = None
    needs_tokenizer: bool = False
    weights: Path | None = None
    aliases: tuple[str, ...] = ()

    def language_model(self) -> type[LanguageModel]:
        """The LLM class this preset builds, whose flags say what training may ask of it (nothing is built;
        the vocabulary size passed to :attr:`config` does not change which LLM it is)."""
        from .modeling.language_model import language_model_class

        return language_model_class(self.config(self.default_image_size, 1).llm)


PRESETS: dict[str, Preset] = {}
_ALIASES: dict[str, str] = {}


class UnknownPresetError(ConfigError):
    """A model name that is not a registered preset."""


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to :data:`PRESETS` (a name or alias may be registered once)."""
    for name in (preset.name, *preset.aliases):
        if name in PRESETS or name in _ALIASES:
            raise ValueError(f"preset name {name!r} is already registered")
    PRESETS[preset.name] = preset
    _ALIASES.update({alias: preset.name for alias in preset.aliases})
    return preset


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (or one of its aliases); :class:`UnknownPresetError` lists the names."""
    preset = PRESETS.get(_ALIASES.get(name, name))
    if preset is None:
        raise UnknownPresetError(f"unknown model preset {name!r}; presets: {', '.join(preset_names())}")
    return preset


def preset_names(with_weights: bool = False) -> tuple[str, ...]:
    """Every registered name and alias (only of presets shipping weights, with ``with_weights``)."""
    return tuple(
        name for p in PRESETS.values() if p.weights is not None or not with_weights for name in (p.name, *p.aliases)
    )


def _byte_tokenizer(folder: str | None) -> Any:
    from .tokenizer import byte_level_tokenizer

    return byte_level_tokenizer()


def _minilm_tokenizer(folder: str | None) -> Any:
    from .modeling.minilm import load_minilm_tokenizer

    return load_minilm_tokenizer()


def _folder_tokenizer(folder: str | None) -> Any:
    from .tokenizer import load_tokenizer

    return load_tokenizer(folder or "")


register_preset(Preset(
    "small", "tiny Swin + Phi test architecture, random init, byte-level tokenizer (seconds on a CPU)",
    lambda size, vocab: small_config(size or 256), _byte_tokenizer, default_image_size=256,
))
register_preset(Preset(
    "nano", "segearth-nano: EfficientNet-Lite0 + MiniLM-L6 (pretrained parts from their packages), heads at "
    "reduced width; built-in trained weights", lambda size, vocab: nano_config(size or 384), _minilm_tokenizer,
    default_image_size=384, weights=WEIGHTS / "nano", aliases=("segearth-nano",),
))
register_preset(Preset(
    "released", "the released SegEarth-R1 sizes (Swin-B + Phi-1.5, 1024²), random init; tokenizer from a folder",
    lambda size, vocab: released_config(vocab_size=vocab), _folder_tokenizer, needs_tokenizer=True,
))
