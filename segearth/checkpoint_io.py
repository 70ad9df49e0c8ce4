"""Reading the files of a checkpoint folder: a bounded ``config.json`` and tensors one at a time.

Weights are read with plain file reads straight into the tensor that becomes the parameter, never
through a memory map: a mapped file keeps every page it has read in the process's resident memory
until it is unmapped, so a map plus converted copies costs two to three times the model size.
Shapes and dtypes come from the safetensors headers, so a whole load can be planned (and refused)
before the first tensor is read. Every floating tensor is checked finite as it is read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; anything near this is not a config
_MAX_HEADER_BYTES = 100 << 20  # the safetensors reference implementation's own limit
_CHUNK_ELEMENTS = 1 << 22  # conversions work on slices this long (16 MiB of fp32)

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded into the model; the message lists every problem."""


def read_config(folder: Path) -> dict:
    """``config.json`` of a checkpoint folder as a dict; size, encoding and nesting are bounded."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a SegEarth-R1 checkpoint folder: config.json is missing")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {size:,} bytes; a checkpoint config is a few KB (limit {MAX_CONFIG_BYTES:,})")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 100k nested brackets: the decoder recurses once per level
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint config") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file


class CheckpointTensors:
    """The tensors of a checkpoint: shapes up front, values one key at a time."""

    shapes: dict[str, tuple[int, ...]]

    def keys(self) -> list[str]:
        """Keys in the order that reads the files sequentially."""
        return list(self.shapes)

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def origin(self, key: str) -> str:
        raise NotImplementedError


class SafetensorsFiles(CheckpointTensors):
    """``*.safetensors`` files (one or sharded), read tensor by tensor without a memory map."""

    def __init__(self, files: list[Path]) -> None:
        self._entries: dict[str, _Entry] = {}
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        for f in files:
            for key, entry in _read_header(f).items():
                if key in self._entries:
                    raise CheckpointError(f"{key} is stored twice: in {self._entries[key].file} and in {f}")
                self._entries[key] = entry
        ordered = sorted(self._entries, key=lambda k: (str(self._entries[k].file), self._entries[k].start))
        self.shapes = {k: self._entries[k].shape for k in ordered}

    def origin(self, key: str) -> str:
        return str(self._entries[key].file)

    def _scratch(self, dtype: torch.dtype) -> torch.Tensor:
        """One conversion buffer per file dtype for the whole load: a fresh one per tensor, freed
        between parameters allocated on the same heap, fragments it (measured: +8 % peak RSS)."""
        if dtype not in self._buffers:
            self._buffers[dtype] = torch.empty(_CHUNK_ELEMENTS, dtype=dtype)
        return self._buffers[dtype]

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        e = self._entries[key]
        out = torch.empty(e.shape, dtype=dtype)
        flat = out.view(-1)
        # Only a conversion to a smaller range can turn finite values infinite; then the file's own
        # values are checked too, to tell a NaN in the file from an overflow.
        narrowing = e.dtype != dtype and _range(dtype) < _range(e.dtype)
        with open(e.file, "rb", buffering=0) as f:
            f.seek(e.start)
            if e.dtype == dtype:
                _read_exact(f, flat, e.file)
            else:  # convert slice by slice: no full-size copy in the file's dtype
                scratch = self._scratch(e.dtype)
                for i in range(0, flat.numel(), _CHUNK_ELEMENTS):
                    part = scratch[: min(_CHUNK_ELEMENTS, flat.numel() - i)]
                    _read_exact(f, part, e.file)
                    if narrowing:
                        check_finite(part, key, self.origin(key))
                    flat[i : i + part.numel()].copy_(part)
        check_finite(out, key, self.origin(key), converted_from=e.dtype if narrowing else None)
        return out


class InMemoryTensors(CheckpointTensors):
    """Tensors already in memory (a ``.bin`` checkpoint, a parity fixture, a state dict)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        self._tensors = tensors
        self._source = source
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def origin(self, key: str) -> str:
        return self._source

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        t = self._tensors[key]
        check_finite(t, key, self._source)
        out = t.to(dtype)
        if out is not t:
            check_finite(out, key, self._source, converted_from=t.dtype)
        return out


def open_weights(folder: Path) -> CheckpointTensors:
    """The weights of a checkpoint folder: ``*.safetensors`` (headers only, for now) or ``pytorch_model*.bin``."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return SafetensorsFiles(files)
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"no weights in {folder}: expected *.safetensors or pytorch_model*.bin")
    tensors: dict[str, torch.Tensor] = {}
    for f in bins:  # pickles have no header to plan from: read whole, as torch.load does
        try:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:  # UnpicklingError for a pickle that tries to run code
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"refusing to load {f}: it is not a plain tensor file ({first}). "
                "Only weights_only pickles are read; convert the checkpoint to safetensors."
            ) from None
    return InMemoryTensors(tensors, ", ".join(str(f) for f in bins))


def stored_parameters(folder: Path) -> int | None:
    """How many values the folder's ``*.safetensors`` files hold (headers only); None without them."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    return sum(math.prod(shape) for shape in SafetensorsFiles(files).shapes.values())


def check_finite(t: torch.Tensor, key: str, origin: str, converted_from: torch.dtype | None = None) -> None:
    """Raise :class:`CheckpointError` if ``t`` holds NaN or Inf.

    min and max propagate NaN and are infinite when any value is: one reduction, no mask tensor,
    several times faster than ``isfinite`` on a CPU.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return
    low, high = torch.aminmax(t)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    if converted_from is not None:
        raise CheckpointError(f"{origin}: tensor {key} overflows {t.dtype} (finite in {converted_from}); "
                              "load it in a wider dtype")
    raise CheckpointError(f"{origin}: tensor {key} holds NaN or Inf values")


def _range(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max if dtype.is_floating_point else 0.0


def _read_header(path: Path) -> dict[str, _Entry]:
    """Parse and check a safetensors header: every tensor lies inside the file with the bytes its shape needs."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
            if size < 8 or not 0 < n <= min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"cannot read {path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"cannot read {path}: corrupt safetensors header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read {path}: corrupt safetensors header (not an object)")
    base, entries = 8 + n, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        entries[key] = _entry(path, key, info, base, size)
    return entries


def _entry(path: Path, key: str, info: object, base: int, size: int) -> _Entry:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"cannot read {path}: tensor {key} {why}")

    if not isinstance(info, dict):
        raise bad("has no dtype/shape/offsets")
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise bad(f"has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise bad(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise bad(f"has invalid data offsets {offsets!r}")
    start, end = offsets[0] + base, offsets[1] + base
    numel = 1
    for d in shape:
        numel *= d
    if not base <= start <= end <= size or end - start != numel * dtype.itemsize:
        raise bad(f"does not fit the file: shape {shape} {info['dtype']} at bytes {offsets} of {size - base}")
    return _Entry(path, dtype, tuple(shape), start)


def _read_exact(f, t: torch.Tensor, path: Path) -> None:
    """Fill contiguous ``t`` from the file's current position (read() returns at most ~2 GiB at a time)."""
    if t.numel() == 0:
        return
    # (numpy's stubs declare ndarray a Buffer only for Python >= 3.12.)
    view = memoryview(t.view(torch.uint8).numpy())  # type: ignore[arg-type]  # bytes view: numpy has no bfloat16
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise CheckpointError(f"cannot read {path}: the file ends inside a tensor")
        done += got
