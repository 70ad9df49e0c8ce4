"""Per-image feature cache: an LRU of :class:`Predictor` objects under a memory budget.

A :class:`~segearth.predictor.Predictor` holds the features of the last image it was given (vision
encoder, pixel decoder, LLM prefix cache). Keeping one Predictor per image id — all sharing the same
model weights — turns a second question about an image into a question-only forward. Entries are
charged by the bytes of the tensors they hold and the least recently used ones are dropped when the
budget is exceeded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

import torch

from ..predictor import Predictor

_SHARED = ("model", "tokenizer")  # shared by every entry: not charged to it


def tensor_bytes(obj: object, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """Bytes of the distinct tensors reachable from ``obj`` (containers, dataclasses, plain objects)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen or _depth > 8:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        # e.g. transformers' DynamicCache, whose layers keep the key/value tensors as attributes
        children = list(vars(obj).values())
    else:
        return 0
    return sum(tensor_bytes(c, seen, _depth + 1) for c in children)


def predictor_bytes(predictor: Predictor) -> int:
    """Memory an image's cached state costs, excluding the shared model and tokenizer."""
    state = {k: v for k, v in vars(predictor).items() if k not in _SHARED}
    return tensor_bytes(state)


class FeatureCache:
    """Thread-safe LRU ``image id -> Predictor`` charged by :func:`predictor_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._items: OrderedDict[str, tuple[Predictor, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Predictor | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: str, predictor: Predictor) -> bool:
        """Cache ``predictor``; False when it alone exceeds the budget (then nothing is kept)."""
        size = predictor_bytes(predictor)
        with self._lock:
            self._items.pop(key, None)
            if size > self.budget:
                return False
            self._items[key] = (predictor, size)
            while self._used() > self.budget:
                self._items.popitem(last=False)
            return True

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def _used(self) -> int:
        return sum(size for _, size in self._items.values())

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._used(), "budget_bytes": self.budget,
                    "hits": self.hits, "misses": self.misses}

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items
