"""Output file names derived from the input raster and the question, and overwrite safety."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path


def refuse_overwrite(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming the first existing path unless ``overwrite``."""
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")


def _ascii_slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def output_stem(input_path: str | Path, question: str, max_len: int = 60) -> str:
    """A filesystem-safe stem ``<input>_<question-slug>_<hash8>`` of at most ``max_len`` chars.

    The hash of the full question keeps two questions that slug alike (or are truncated
    alike, or are not Latin script) from overwriting each other's outputs.
    """
    digest = hashlib.sha1(question.encode("utf-8")).hexdigest()[:8]
    name = _ascii_slug(Path(input_path).stem)[:24] or "raster"
    room = max_len - len(name) - len(digest) - 2
    slug = _ascii_slug(question)[: max(room, 0)].rstrip("-") or "q"
    return f"{name}_{slug}_{digest}"[:max_len]
