"""Typed configs from plain data (JSON, YAML): the one loader of the model and the training configs.

A config is a dataclass whose type hints say everything a value must be: ``Annotated[int, Range(1,
256)]`` bounds a number, ``Literal[...]`` or :class:`OneOf` lists the choices, :class:`Length` fixes a
sequence's length, ``X | None`` allows null, and a union of dataclasses is told apart by their
``kind`` field. :func:`from_data` builds a config from a mapping and reports the first problem as one
line naming the key path: an unknown key with the nearest valid one, a value of the wrong type or out
of range with what was expected. Nothing is converted that could lose information (no ``"1"`` -> 1,
no ``true`` -> 1), so a typo never becomes a silently different run or model.

The bounds of the model config (:mod:`segearth.config`) are far above any SegEarth-R1 model (the
released one has 1.6 B parameters) but low enough that no value passing them alone can exhaust
memory; :data:`MAX_PARAMETERS` then bounds the model as a whole (``checkpoint.check_model_size``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from .errors import ConfigError

MAX_PARAMETERS = 10_000_000_000  # six times the released model
MAX_IMAGE_SIZE = 4096  # 16x the pixels of the released 1024² input; activations grow with its square


@dataclass(frozen=True)
class Range:
    """Bounds of a number (inclusive unless ``*_open``); ``step``: integers must be multiples of it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    step: int | None = None

    def admits(self, x: float) -> bool:
        low_ok = self.low is None or (x > self.low if self.low_open else x >= self.low)
        high_ok = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return low_ok and high_ok and (self.step is None or x % self.step == 0)

    def describe(self, integer: bool) -> str:
        if self.low is None and self.high is None:
            return "an integer" if integer else "a finite number"
        if integer:
            if self.step is not None:
                return f"a multiple of {self.step} in [{self.low:,}, {self.high:,}]"
            if self.low in (0, 1) and not self.low_open:
                sign = "a positive" if self.low == 1 else "a non-negative"
                return f"{sign} integer" + (f" <= {self.high:,}" if self.high is not None else "")
            return f"an integer in [{self.low}, {self.high}]"
        if self.high is None and self.low == 0:
            return "a positive number" if self.low_open else "a non-negative number"
        if self.high is None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    """The strings a value may be; a callable is asked only when a value is checked (lazy imports)."""

    choices: tuple[str, ...] | Callable[[], tuple[str, ...]]

    def values(self) -> tuple[str, ...]:
        return self.choices() if callable(self.choices) else self.choices


@dataclass(frozen=True)
class Length:
    """The number of items of a list or tuple."""

    n: int


def from_data(
    cls: type,
    data: Any,
    key: str = "",
    *,
    ignore_unknown: bool = False,
    aliases: Mapping[str, str] | None = None,
) -> Any:
    """An instance of the dataclass ``cls`` from plain data; raises :class:`ConfigError`.

    Args:
        key: where ``data`` sits, for messages (``"segearth"`` -> ``segearth.llm.hidden_size``).
        ignore_unknown: skip keys ``cls`` does not have (an official ``config.json`` mixes ours with
            many others) instead of refusing them.
        aliases: names people bring from elsewhere -> ours, suggested for an unknown key.
    """
    return _Loader(ignore_unknown, dict(aliases or {})).value(data, cls, key)


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf value of the dataclass ``cls`` (``optim.lr``, ...)."""
    out = []
    for name, hint in _hints(cls).items():
        sub = _strip(hint)[0]
        nested = isinstance(sub, type) and dataclasses.is_dataclass(sub)
        out += all_keys(sub, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return out


def nearest(key: str, options: list[str], aliases: Mapping[str, str] | None = None) -> str:
    """``"; did you mean 'x'?"`` for an unknown ``key`` (or the list of valid keys when none is close)."""
    prefix, _, leaf = key.rpartition(".")
    alias = (aliases or {}).get(leaf)
    if alias is not None and f"{prefix}.{alias}".lstrip(".") in options:
        return f"; did you mean {f'{prefix}.{alias}'.lstrip('.')!r}?"
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.4)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(options)}"


def _show(value: Any) -> str:
    """A short JSON rendering of a bad value for an error line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip(hint: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, m1, m2]`` -> ``(T, [m1, m2])``."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, meta
    return hint, []


def _kind(cls: type) -> str:
    kind = next(f.default for f in dataclasses.fields(cls) if f.name == "kind")
    assert isinstance(kind, str)  # a config with several kinds declares `kind: Literal[...] = "..."`
    return kind


@dataclass
class _Loader:
    ignore_unknown: bool
    aliases: dict[str, str]

    def value(self, value: Any, hint: Any, key: str) -> Any:
        tp, meta = _strip(hint)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(value, tp, key)
        if origin in (Union, types.UnionType):
            return self.union(value, typing.get_args(tp), key)
        if origin in (list, tuple):
            return self.sequence(value, tp, meta, key)

        def fail(want: str) -> ConfigError:
            return ConfigError(f"{key} must be {want}, got {_show(value)}")

        if origin is Literal or tp is str:
            choices = tuple(typing.get_args(tp)) if origin is Literal else None
            choices = next((m.values() for m in meta if isinstance(m, OneOf)), choices)
            if not isinstance(value, str) or (choices is not None and value not in choices):
                raise fail(f"one of {', '.join(map(str, choices))}" if choices is not None else "a string")
            return value
        bounds = next((m for m in meta if isinstance(m, Range)), Range())
        if tp is bool:
            if not isinstance(value, bool):
                raise fail("true or false")
            return value
        if tp is int:
            if type(value) is not int or not bounds.admits(value):
                raise fail(bounds.describe(integer=True))
            return value
        if tp is float:
            # JSON and YAML write 10000.0 as 10000: an integer is a lossless float.
            if type(value) not in (int, float) or not math.isfinite(value) or not bounds.admits(value):
                raise fail(bounds.describe(integer=False))
            return float(value)
        raise TypeError(f"{key}: no rule to check values of type {tp!r}")  # a config class bug

    def dataclass(self, value: Any, cls: type, key: str) -> Any:
        if not isinstance(value, dict):
            raise ConfigError(f"{key or 'the config'} must be a mapping of keys, got {_show(value)}")
        hints = _hints(cls)
        prefix = f"{key}." if key else ""
        unknown = [k for k in value if k not in hints]
        if unknown and not self.ignore_unknown:
            full = f"{prefix}{unknown[0]}"
            raise ConfigError(f"unknown config key {full!r}" + nearest(full, [prefix + n for n in hints], self.aliases))
        kwargs = {name: self.value(value[name], hint, prefix + name) for name, hint in hints.items() if name in value}
        return cls(**kwargs)

    def union(self, value: Any, options: tuple[Any, ...], key: str) -> Any:
        if value is None and type(None) in options:
            return None
        options = tuple(o for o in options if o is not type(None))
        if all(dataclasses.is_dataclass(o) for o in options):  # alternatives told apart by their "kind"
            kinds = {_kind(o): o for o in options}
            if not isinstance(value, dict):
                return self.dataclass(value, options[0], key)  # refused: not a mapping
            kind = value.get("kind", next(iter(kinds)))
            if kind not in kinds:
                raise ConfigError(f"{key}.kind must be one of {', '.join(sorted(kinds))}, got {_show(kind)}")
            return self.dataclass(value, kinds[kind], key)
        (only,) = options  # X | None; unions of plain types are not part of any config
        return self.value(value, only, key)

    def sequence(self, value: Any, tp: Any, meta: list[Any], key: str) -> Any:
        args = typing.get_args(tp)
        fixed = typing.get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        length = len(args) if fixed else next((m.n for m in meta if isinstance(m, Length)), None)
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise ConfigError(
                f"{key} must be {f'a list of {length} values' if length is not None else 'a list'}, got {_show(value)}"
            )
        items = [self.value(v, args[i] if fixed else args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if typing.get_origin(tp) is tuple else items
