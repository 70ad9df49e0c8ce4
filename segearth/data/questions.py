"""The question bank: per class, referring expressions and reasoning questions, some held out.

The phrasings live in ``question_bank.yaml`` next to this module (data, not code). Each class has
explicit referring expressions (the class is named), implicit reasoning questions (the class must be
inferred from what it is used for or how it behaves) and a *held-out* part of both that only
validation splits draw from, so that validation can tell new wordings from memorised ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from segearth.errors import InputError

BANK_FILE = "question_bank.yaml"


@dataclass(frozen=True)
class ClassQuestions:
    """The phrasings for one class.

    Attributes:
        referring: explicit expressions naming the class (training and validation).
        reasoning: implicit questions whose answer is this class (training and validation).
        answer: reference answer for reasoning questions.
        heldout_referring, heldout_reasoning: phrasings only validation uses.
    """

    referring: tuple[str, ...]
    reasoning: tuple[str, ...]
    answer: str
    heldout_referring: tuple[str, ...] = ()
    heldout_reasoning: tuple[str, ...] = ()

    def phrasings(self, kind: str, heldout: bool) -> tuple[str, ...]:
        """The ``kind`` (``referring``/``reasoning``) phrasings, seen or held-out."""
        if kind not in ("referring", "reasoning"):
            raise ValueError(f"phrasing kind must be 'referring' or 'reasoning', got {kind!r}")
        if heldout:
            return self.heldout_referring if kind == "referring" else self.heldout_reasoning
        return self.referring if kind == "referring" else self.reasoning


def _strings(entry: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = entry.get(key)
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise InputError(f"{BANK_FILE}: {where}.{key} must be a non-empty list of phrasings")
    return tuple(v.strip() for v in values)


def parse_bank(data: Any) -> dict[str, ClassQuestions]:
    """Validate a loaded bank (see ``question_bank.yaml`` for the layout)."""
    if not isinstance(data, dict) or not data:
        raise InputError(f"{BANK_FILE}: expected a mapping of class name -> phrasings")
    bank: dict[str, ClassQuestions] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("answer"), str):
            raise InputError(f"{BANK_FILE}: class {name!r} needs 'answer', 'referring', 'reasoning' and 'heldout'")
        unknown = set(entry) - {"answer", "referring", "reasoning", "heldout"}
        if unknown:
            raise InputError(f"{BANK_FILE}: class {name!r} has unknown keys {sorted(unknown)}")
        heldout = entry.get("heldout") or {}
        questions = ClassQuestions(
            referring=_strings(entry, "referring", name),
            reasoning=_strings(entry, "reasoning", name),
            answer=entry["answer"],
            heldout_referring=_strings(heldout, "referring", f"{name}.heldout"),
            heldout_reasoning=_strings(heldout, "reasoning", f"{name}.heldout"),
        )
        seen = {q.lower() for q in questions.referring + questions.reasoning}
        leaked = [q for q in questions.heldout_referring + questions.heldout_reasoning if q.lower() in seen]
        if leaked:
            raise InputError(f"{BANK_FILE}: class {name!r}: held-out phrasings also seen in training: {leaked}")
        bank[str(name)] = questions
    return bank


@cache
def question_bank() -> dict[str, ClassQuestions]:
    """The packaged bank, parsed and checked once."""
    text = resources.files("segearth.data").joinpath(BANK_FILE).read_text(encoding="utf-8")
    return parse_bank(yaml.safe_load(text))


CLASS_QUESTIONS: dict[str, ClassQuestions] = question_bank()
